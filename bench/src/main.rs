//! `outpost-bench`: measures Outpost on this machine against the direct path and against
//! peers, in one run. It starts everything itself on loopback: the upstream MCP server
//! (this binary, `upstream-http` / `upstream-stdio`), the real `outpost-relay` and
//! `outpost-agent` binaries, supergateway and mcp-proxy; then runs the workloads of issue 6
//! and prints one Markdown table per workload plus a JSON file with every figure.
//!
//! - (a) `latency`: echo at concurrency 1, every target, ratios to direct.
//! - (b) `throughput`: closed loop at c = 1, 16, 256 (`--concurrency`); open loop at 50% and
//!   80% of peak.
//!   (a) and (b) run in both protocol eras (2025 sessions, 2026-07-28 stateless), each
//!   era's ratios to its own direct path.
//! - (c) `large`: 1 MiB and 10 MiB results, MiB/s, peak RSS, small calls meanwhile.
//! - (d) `idle`: 1k and 10k idle TLS agents, relay memory per agent and idle CPU.
//! - (e) `reconnect`: relay killed and restarted under a connected fleet.
//! - (f) `handshakes`: TLS handshakes per second the relay accepts.
//! - (g) `peers`: supergateway and mcp-proxy beside Outpost on (a), (b) and (c).
//!
//! Beside Outpost in (a), (b) and (c) runs the floor: two TLS forwarders in series
//! (`forward`, this binary; one with `--floor-hops 1`) that pass the bytes on unread.
//!
//! Targets take turns within each round (A B C A B C), at least two rounds.

mod client;
mod fleet;
mod forward;
mod handshakes;
mod idle;
mod large;
mod latency;
mod load;
mod peers;
mod procfs;
mod reconnect;
mod report;
mod stack;
mod throughput;
mod upstream;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use outpost_tunnel::runtime::WORKER_THREADS_ENV;

use crate::report::Section;
use crate::stack::{Binaries, FloorHops, Stack};

/// Measures Outpost against the direct path and against peers, on this machine.
#[derive(Debug, Parser)]
#[command(name = "outpost-bench")]
struct Args {
    /// Workloads to run: `all`, or any of a b c d e f g (g: the peers' summary, runs a b c).
    #[arg(default_value = "all")]
    workloads: Vec<String>,
    /// A few seconds' smoke run of every workload, so the benchmark cannot rot.
    #[arg(long)]
    quick: bool,
    /// Rounds; targets take turns within each.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Calls per target per round in (a).
    #[arg(long, default_value_t = 2_000)]
    calls: usize,
    /// Fleet sizes for (d) and (e).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    agents: Vec<usize>,
    /// Concurrency levels of (b)'s closed loop, ascending; its ratio, p99 and CPU columns
    /// use the last, its open loop the peak over all. `--quick` runs 1 and 4.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 256])]
    concurrency: Vec<usize>,
    /// Keep only the targets whose names contain one of these words (comma-separated), e.g.
    /// `--targets "2026 → HTTP"`; the direct paths always stay, since ratios divide by them.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Leave out supergateway and mcp-proxy (always left out with --quick, unless --peers).
    #[arg(long)]
    no_peers: bool,
    /// Include the peers in a --quick run.
    #[arg(long)]
    peers: bool,
    /// Forwarders on the floor targets' path: 2 (as many hops as through Outpost) or 1 (the
    /// least any relay can be).
    #[arg(long, value_enum, default_value = "2")]
    floor_hops: FloorHops,
    /// Runs the relay of a, b, c, f and d under this command, e.g. "valgrind
    /// --tool=callgrind --callgrind-out-file=relay.callgrind" (a profile of workload a), or
    /// "valgrind --tool=massif" (where an idle agent's memory goes, with d).
    #[arg(long)]
    relay_under: Option<String>,
    /// Runs the agent of a, b, c under this command, e.g. "valgrind --tool=callgrind
    /// --callgrind-out-file=agent.callgrind" (a profile of the large results of c).
    #[arg(long)]
    agent_under: Option<String>,
    /// Worker threads of the relay's, the agent's and the floor's forwarders' runtimes
    /// (their `OUTPOST_WORKER_THREADS`); 0: each one's default, a worker per CPU. One by
    /// default: here four busy processes share the machine's cores.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
}

/// What every workload needs to know about this run.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
    /// Calls per target per round in (a).
    pub(crate) calls: usize,
    /// A command the relay runs under (valgrind), split into words.
    pub(crate) relay_under: Vec<String>,
    /// A command the agent runs under (valgrind), split into words.
    pub(crate) agent_under: Vec<String>,
    agents: Vec<usize>,
    /// (b)'s closed-loop concurrency levels, ascending.
    pub(crate) concurrency: Vec<usize>,
}

impl Settings {
    /// Fleet sizes for (d) and (e).
    pub(crate) fn fleet_sizes(&self) -> Vec<usize> {
        if self.quick {
            vec![QUICK_FLEET]
        } else {
            self.agents.clone()
        }
    }
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1);
    let result = match mode.as_deref() {
        // The upstream servers, as child processes: small runtimes, the work is tiny.
        Some("upstream-stdio") => run_on(Runtime::OneThread, upstream::serve_stdio()),
        Some("upstream-http") => run_on(Runtime::TwoThreads, upstream::serve_http()),
        Some("upstream-stdio-2026") => run_on(Runtime::OneThread, upstream::serve_stdio_2026()),
        Some("upstream-http-2026") => run_on(Runtime::TwoThreads, upstream::serve_http_2026()),
        // The floor's forwarders: as many workers as the relay and the agent run.
        Some("forward") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            run_on(Runtime::AsOutpost, forward::serve(&args))
        }
        _ => run_on(Runtime::TwoThreads, until_signal(bench(Args::parse()))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` until it ends or SIGINT/SIGTERM arrives. On a signal the work is dropped,
/// and with it every process it started (each is killed as its handle drops): a run
/// interrupted by ^C or `timeout` leaves no relay, agent or upstream behind.
async fn until_signal(
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = work => result,
        _ = term.recv() => Err(anyhow::anyhow!("interrupted by SIGTERM")),
        _ = int.recv() => Err(anyhow::anyhow!("interrupted by SIGINT")),
    }
}

/// A wrapper command line, split into words.
fn words(command: Option<&str>) -> Vec<String> {
    command
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The tokio runtime a mode runs on.
enum Runtime {
    OneThread,
    TwoThreads,
    /// As the relay and the agent build theirs: `OUTPOST_WORKER_THREADS` workers if set
    /// (the bench sets it for them all, see `--workers`), else one per CPU.
    AsOutpost,
}

fn run_on(
    runtime: Runtime,
    future: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let runtime = match runtime {
        Runtime::OneThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Runtime::TwoThreads => outpost_tunnel::runtime::build(NonZeroUsize::new(2))?,
        Runtime::AsOutpost => {
            let workers = std::env::var(WORKER_THREADS_ENV)
                .ok()
                .map(|n| n.parse::<NonZeroUsize>())
                .transpose()
                .context(WORKER_THREADS_ENV)?;
            outpost_tunnel::runtime::build(workers)?
        }
    };
    runtime.block_on(future)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    // reqwest is built without a default provider; plain-HTTP clients need one all the same.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut selected: Vec<char> = Vec::new();
    for word in &args.workloads {
        match word.as_str() {
            "all" => selected.extend("abcdefg".chars()),
            letter if letter.len() == 1 && "abcdefg".contains(letter) => {
                selected.extend(letter.chars());
            }
            other => anyhow::bail!("unknown workload {other:?}: use all or a b c d e f g"),
        }
    }
    if selected.contains(&'g') {
        selected.extend("abc".chars());
    }
    let wants = |w: char| selected.contains(&w);
    anyhow::ensure!(
        !args.concurrency.is_empty()
            && !args.concurrency.contains(&0)
            && args.concurrency.is_sorted_by(|a, b| a < b),
        "--concurrency takes levels above zero, ascending"
    );
    let settings = Settings {
        quick: args.quick,
        rounds: if args.quick { 1 } else { args.rounds.max(2) },
        calls: if args.quick { 50 } else { args.calls },
        relay_under: words(args.relay_under.as_deref()),
        agent_under: words(args.agent_under.as_deref()),
        agents: args.agents.clone(),
        concurrency: args.concurrency.clone(),
    };
    let binaries = Binaries::locate(!args.quick, NonZeroUsize::new(args.workers))?;
    let mut machine = report::machine();
    // How the measured processes ran belongs with where they ran.
    let workers = match args.workers {
        0 => "one per CPU".to_owned(),
        n => n.to_string(),
    };
    machine["outpost_worker_threads"] = serde_json::Value::from(workers.as_str());
    println!(
        "outpost-bench{}: {} × {}, {} GiB, Linux {}; load average at start {}; worker threads of the relay, the agent and the forwarders: {}",
        if args.quick { " --quick" } else { "" },
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["loadavg_at_start"].as_str().unwrap_or("?"),
        workers,
    );

    let mut sections: Vec<Section> = Vec::new();
    if wants('a') || wants('b') || wants('c') || wants('f') {
        let peers = !args.no_peers && (!args.quick || args.peers);
        let stack = Stack::start(
            &binaries,
            peers,
            args.floor_hops,
            &settings.relay_under,
            &settings.agent_under,
        )
        .await?
        .keep(&args.targets);
        let names: Vec<&str> = stack.targets.iter().map(|t| t.name).collect();
        println!("targets: {}", names.join(", "));
        if wants('a') {
            let section = latency::run(&stack, &settings).await?;
            section.print();
            sections.push(section);
        }
        if wants('b') {
            for section in throughput::run(&stack, &settings).await? {
                section.print();
                sections.push(section);
            }
        }
        if wants('c') {
            let section = large::run(&stack, &settings).await?;
            section.print();
            sections.push(section);
        }
        if wants('f') {
            let section = handshakes::run(&stack, &settings).await?;
            section.print();
            sections.push(section);
        }
        stack.stop().await;
    }
    if wants('g') {
        let section = peers::summary(&sections);
        section.print();
        sections.push(section);
    }
    if wants('d') {
        let section = idle::run(&binaries, &settings).await?;
        section.print();
        sections.push(section);
    }
    if wants('e') {
        let section = reconnect::run(&binaries, &settings).await?;
        section.print();
        sections.push(section);
    }
    let json = if args.json.is_absolute() {
        args.json.clone()
    } else {
        outpost_test_support::workspace_root().join(&args.json)
    };
    report::write_json(&json, &sections, machine)?;
    println!("\nresults: {}", json.display());
    Ok(())
}

/// Agents in the quick run's fleet.
const QUICK_FLEET: usize = 50;
