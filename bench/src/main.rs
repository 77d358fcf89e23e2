//! `outpost-bench`: measures the cost of going through Outpost. Starts everything itself on
//! 127.0.0.1 (an rmcp Streamable HTTP server, a relay, an agent), then calls the same tool
//! directly and through relay + agent, interleaved (direct, outpost, direct, outpost, ...)
//! so that both see the same machine noise, and prints percentiles and their ratios.
//!
//! Today it has one workload, latency of a 16-byte echo at concurrency 1; the full suite
//! (throughput, large results, idle tunnels, reconnect storms, peers) is issue 6.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use outpost_test_support::{HttpStack, McpClient, relay};
use serde_json::json;
use tokio::time::Instant;

/// Measures Outpost's added latency against the direct path, on this machine.
#[derive(Debug, Parser)]
#[command(name = "outpost-bench")]
struct Args {
    /// Calls per target per round.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Rounds; targets alternate within each round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Calls before measuring, per target.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// A few seconds' smoke run, so the benchmark cannot rot.
    #[arg(long)]
    quick: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.calls = 50;
        args.rounds = 2;
        args.warmup = 10;
    }
    let stack = HttpStack::start(relay()).await?;
    let mut through = stack.client().await?;
    let http = stack.relay.http_client();
    let mut direct = McpClient::new(http, stack.upstream.url.clone(), "unused");
    direct.initialize().await.context("direct session")?;

    for _ in 0..args.warmup {
        echo(&mut direct).await?;
        echo(&mut through).await?;
    }
    let mut direct_hist = histogram();
    let mut through_hist = histogram();
    for _ in 0..args.rounds {
        for _ in 0..args.calls {
            direct_hist.record(echo(&mut direct).await?)?;
            through_hist.record(echo(&mut through).await?)?;
        }
    }
    let n = args.calls * args.rounds;
    println!(
        "workload (a): tools/call echo, 16 B, concurrency 1, {n} calls per target, {} rounds interleaved",
        args.rounds
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "target", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for (name, hist) in [
        ("direct (rmcp HTTP)", &direct_hist),
        ("relay + agent (TLS)", &through_hist),
    ] {
        println!(
            "{:<22} {:>10} {:>10} {:>10} {:>10}",
            name,
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.90),
            hist.value_at_quantile(0.99),
            hist.max()
        );
    }
    let ratio = |q: f64| {
        through_hist.value_at_quantile(q) as f64 / direct_hist.value_at_quantile(q).max(1) as f64
    };
    println!(
        "ratio to direct        p50 {:.2}x   p90 {:.2}x   p99 {:.2}x   added p50 {} µs",
        ratio(0.5),
        ratio(0.9),
        ratio(0.99),
        through_hist
            .value_at_quantile(0.5)
            .saturating_sub(direct_hist.value_at_quantile(0.5))
    );
    stack.stop().await;
    Ok(())
}

/// One echo call; its latency in microseconds.
async fn echo(client: &mut McpClient) -> anyhow::Result<u64> {
    let started = Instant::now();
    let response = client
        .call_tool("echo", json!({"message": "sixteen bytes!!!"}))
        .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        response.result().is_ok(),
        "echo failed: {:?}",
        response.messages
    );
    Ok(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, Duration::from_secs(60).as_micros() as u64, 3)
        .expect("valid histogram bounds")
}
