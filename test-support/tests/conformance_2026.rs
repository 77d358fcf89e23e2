//! The official conformance suite of the current, stateless era
//! (`@modelcontextprotocol/conformance` 0.2.0-alpha.12, revision 2026-07-28: every
//! scenario but the unscored tasks extension) through `/mcp/{agent}/{server}`, against
//! the target `tests/conformance-2026/server-2026.mjs` behind the agent, compared with the
//! same suite against the target directly.

use outpost_test_support::conformance::{SuiteRun, direct_and_through_relay};

const TARGET: &str = "tests/conformance-2026/server-2026.mjs";

async fn through_relay(over_stdio: bool, subcommand: &str) -> anyhow::Result<(SuiteRun, SuiteRun)> {
    direct_and_through_relay(TARGET, subcommand, over_stdio).await
}

/// The scenarios a run failed.
fn failed(run: &SuiteRun) -> Vec<String> {
    let mut names: Vec<String> = run
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("✗ "))
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_suite_passes_through_the_relay_to_an_http_server() -> anyhow::Result<()> {
    let (direct, through) = through_relay(false, "run-2026").await?;
    assert_eq!(
        through.summary, direct.summary,
        "the same result as directly:\n{}",
        through.output
    );
    assert_eq!(through.code, Some(0), "{}", through.output);
    Ok(())
}

/// Over stdio the agent stands in for the server's HTTP side: stateless requests share one
/// process per server (so a multi-round `requestState` signed by the process verifies in
/// the next round), and `Mcp-Param-*` headers are checked against the tools' `x-mcp-header`
/// arguments by the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_2026_suite_passes_through_the_relay_to_a_stdio_server() -> anyhow::Result<()> {
    let (direct, through) = through_relay(true, "run-2026").await?;
    assert!(failed(&direct).is_empty(), "{}", direct.output);
    assert_eq!(failed(&through), Vec::<String>::new(), "{}", through.output);
    assert_eq!(
        through.summary, direct.summary,
        "the same result as directly:\n{}",
        through.output
    );
    assert_eq!(through.code, Some(0), "{}", through.output);
    Ok(())
}
