//! The benchmark's smoke mode runs end to end, so the benchmark cannot rot between the
//! runs that measure (`cargo run --release -p outpost-bench`).

use outpost_test_support::{Process, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_in_quick_mode() -> anyhow::Result<()> {
    let mut bench = Process::spawn(&binary("outpost-bench"), &["--quick"], &[])?;
    let code = bench.wait().await?;
    let output = bench.output();
    assert_eq!(code, Some(0), "{output}");
    for row in [
        "direct (rmcp HTTP)",
        "relay + agent (TLS)",
        "ratio to direct",
    ] {
        assert!(output.contains(row), "{row} missing from:\n{output}");
    }
    Ok(())
}
