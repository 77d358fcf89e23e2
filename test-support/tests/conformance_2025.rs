//! The official conformance suite of the 2025 era (`@modelcontextprotocol/conformance`
//! 0.1.16, every active server scenario) gives the same result through
//! `/mcp/{agent}/{server}` as against the target directly, with the target
//! (`tests/conformance/server-2025.mjs`) behind the agent over stdio and over Streamable
//! HTTP. A small proxy adds the key the suite does not send; the relay's `Origin`
//! allow-list names the proxy's origin, so the suite's DNS-rebinding scenario meets the
//! relay's own check.

use outpost_test_support::conformance::direct_and_through_relay;

const TARGET: &str = "tests/conformance/server-2025.mjs";

async fn through_relay(over_stdio: bool) -> anyhow::Result<()> {
    let (direct, through) = direct_and_through_relay(TARGET, "run-2025", over_stdio).await?;
    assert!(direct.summary.contains("failed=0"), "{}", direct.summary);
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
