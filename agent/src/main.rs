//! The `outpost-agent` binary: parses flags, sets up logging, loads configuration (exit
//! code 64 when it is invalid, before any connection is made), and runs the agent until
//! SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use outpost_agent::Agent;
use outpost_agent::config::{Config, Overrides};
use tokio_util::sync::CancellationToken;

/// Outpost agent: makes MCP servers inside this network reachable through an Outpost
/// relay, dialing out over TLS 1.3 to the relay's port (443 by default). Opens no
/// inbound port.
///
/// The agent key comes from OUTPOST_AGENT_KEY or the config's key_file, never from a flag.
#[derive(Debug, Parser)]
#[command(name = "outpost-agent", version)]
struct Cli {
    /// Configuration file (TOML). Keys may also come from OUTPOST_* variables, e.g.
    /// OUTPOST_RELAY_URL.
    #[arg(long, short, global = true, env = "OUTPOST_CONFIG")]
    config: Option<PathBuf>,
    /// The relay, wss://HOST[:PORT] (overrides `relay_url`).
    #[arg(long, global = true)]
    relay_url: Option<String>,
    /// CA certificates (PEM) to trust for the relay instead of the system roots
    /// (overrides `ca_file`).
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OUTPOST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the relay and serve (the default).
    Run,
    /// Validate the configuration and exit.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    outpost_tunnel::runtime::init_logging(matches!(cli.log_format, LogFormat::Json));
    let overrides = Overrides {
        relay_url: cli.relay_url.clone(),
        ca_file: cli.ca_file.clone(),
    };
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if matches!(cli.command, Some(Command::Check)) {
        println!(
            "configuration valid: relay {}, servers: {}",
            config.relay_url,
            config
                .servers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let agent = match Agent::new(config) {
            Ok(agent) => agent,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(EX_CONFIG);
            }
        };
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(outpost_tunnel::runtime::cancel_on_signal(
            shutdown.clone(),
            "draining",
        ));
        agent.run(shutdown).await;
        signals.abort();
        ExitCode::SUCCESS
    })
}

/// Exit code for an invalid configuration.
const EX_CONFIG: u8 = 64;
