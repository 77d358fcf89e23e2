//! The official conformance suite of the 2025 era (`@modelcontextprotocol/conformance`
//! 0.1.16, every active server scenario) gives the same result through
//! `/mcp/{agent}/{server}` as against the target directly, with the target
//! (`tests/conformance/server-2025.mjs`) behind the agent over stdio and over Streamable
//! HTTP. A small proxy adds the key the suite does not send; the relay's `Origin`
//! allow-list names the proxy's origin, so the suite's DNS-rebinding scenario meets the
//! relay's own check.

use outpost_test_support::conformance::{InjectAuth, Target, free_port, node22, run_suite};
use outpost_test_support::{agent, relay, workspace_root};

const TARGET: &str = "tests/conformance/server-2025.mjs";

async fn through_relay(over_stdio: bool) -> anyhow::Result<()> {
    let direct_target = Target::start(TARGET).await?;
    let direct = run_suite("run-2025", &direct_target.url).await?;
    assert_eq!(direct.code, Some(0), "directly:\n{}", direct.output);
    assert!(direct.summary.contains("failed=0"), "{}", direct.summary);

    let port = free_port()?;
    let origins = [
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ];
    let origins: Vec<&str> = origins.iter().map(String::as_str).collect();
    let relay = relay().allow(&[], &origins).spawn().await?;
    let script = workspace_root().join(TARGET);
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
        let target = Target::start(TARGET).await?;
        (
            agent(&relay, "site").http("conf", &target.url),
            Some(target),
        )
    };
    let agent = builder.spawn().await?;
    let key = relay.client_key().await?;
    let proxy = InjectAuth::start(&relay, &key, port).await?;

    let through = run_suite("run-2025", &format!("{}/mcp/site/conf", proxy.base)).await?;
    assert_eq!(
        through.code,
        Some(0),
        "through the relay:\n{}",
        through.output
    );
    assert_eq!(
        through.summary, direct.summary,
        "the same result as directly:\n{}",
        through.output
    );
    println!(
        "directly: {}\nthrough the relay: {}",
        direct.summary, through.summary
    );
    agent.stop().await;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2025_suite_passes_through_the_relay_to_a_stdio_server() -> anyhow::Result<()> {
    through_relay(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2025_suite_passes_through_the_relay_to_an_http_server() -> anyhow::Result<()> {
    through_relay(false).await
}
