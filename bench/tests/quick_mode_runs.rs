//! The benchmark's smoke mode runs every workload end to end, so the benchmark cannot rot
//! between the runs that measure (`cargo run --release -p outpost-bench -- all`).

use outpost_test_support::{Process, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_in_quick_mode() -> anyhow::Result<()> {
    let json = tempfile::NamedTempFile::new()?;
    let json_path = json.path().to_string_lossy().into_owned();
    let mut bench = Process::spawn(
        &binary("outpost-bench"),
        &["--quick", "--json", &json_path, "all"],
        &[],
    )?;
    let code = bench
        .wait_within(std::time::Duration::from_secs(110))
        .await?;
    let output = bench.output();
    assert_eq!(code, Some(0), "{output}");
    for row in [
        "| direct (rmcp HTTP) |",
        "| outpost → HTTP |",
        "| outpost → stdio |",
        "| floor: 2 TLS forwarders → HTTP |",
        "| direct 2026 (Rust HTTP) |",
        "| outpost 2026 → HTTP |",
        "| outpost 2026 → stdio |",
        "| outpost 2026 → rmcp HTTP, bridged |",
        "| floor 2026: 2 TLS forwarders → HTTP |",
        "(a) echo 16 B",
        "(b) echo throughput",
        "(b) open-loop",
        "(c) large results",
        "(d) idle TLS agents",
        "(e) relay killed",
        "(f) full TLS 1.3 handshakes",
        "(g) ratio to direct",
    ] {
        assert!(output.contains(row), "{row} missing from:\n{output}");
    }
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(json.path())?)?;
    for key in [
        "machine",
        "a_latency",
        "b_throughput",
        "c_large_results",
        "d_idle_agents",
        "e_reconnect",
        "f_handshakes",
        "g_peers",
    ] {
        assert!(
            results.get(key).is_some(),
            "{key} missing from the JSON results"
        );
    }
    // A target that answers nothing still prints its row: every load must have made calls,
    // and none may have failed.
    for (key, parts) in [
        ("a_latency", &["outcome"][..]),
        ("b_throughput", &["outcome"]),
        ("b_open_loop", &["outcome"]),
        ("c_large_results", &["big", "small"]),
    ] {
        let items = results[key].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!items.is_empty(), "{key} has no runs");
        for item in items {
            for part in parts {
                let outcome = &item[*part];
                let name = format!("{key} {} {part}", item["target"]);
                assert!(outcome["calls"].as_u64() > Some(0), "{name} made no calls");
                assert_eq!(
                    outcome["errors"].as_u64(),
                    Some(0),
                    "{name} failed: {}",
                    outcome["first_error"]
                );
            }
        }
    }
    for round in results["f_handshakes"].as_array().into_iter().flatten() {
        assert_eq!(round["failures"].as_u64(), Some(0), "handshakes failed");
    }
    Ok(())
}
