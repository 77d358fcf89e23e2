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
    /// Worker threads of the async runtime; default: one per CPU this process may use. One
    /// spends less CPU per call where other busy processes share the cores.
    #[arg(long, global = true, env = outpost_tunnel::runtime::WORKER_THREADS_ENV)]
    worker_threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the relay and serve (the default).
    Run,
    /// Validate the configuration, then try each step of the path to the relay (name
    /// lookup, TCP, proxy, TLS 1.3, pin, key) and print the first failing one with the
    /// rule that would fix it. Exit 0 when all pass, 1 when a step fails, 64 when the
    /// configuration is invalid.
    Check {
        /// Only validate the configuration; make no connection.
        #[arg(long)]
        config_only: bool,
    },
    /// Ask the running agent's health endpoint (`health.listen`) whether it is ready
    /// (or only alive, with --live); exit 0 if so. For container health checks.
    Healthcheck {
        /// Check /livez instead of /readyz.
        #[arg(long)]
        live: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// mimalloc, not glibc's malloc: every call allocates and frees a few dozen small buffers,
/// often on another worker thread than the one that allocated them, and glibc's arenas
/// took about a sixth of the process's instructions doing it (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    outpost_tunnel::runtime::init_logging(matches!(cli.log_format, LogFormat::Json));
    // Before any secret is read: other processes of the same user may no longer read this
    // one's memory or /proc/PID/environ, nor attach a debugger. Children are unaffected
    // (the flag resets on exec).
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%err, "cannot make the process non-dumpable");
    }
    let overrides = Overrides {
        relay_url: cli.relay_url.clone(),
        ca_file: cli.ca_file.clone(),
    };
    let config_file = cli.config.clone();
    let load = move || Config::load(config_file.as_deref(), &overrides);
    let config = match (load)() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let runtime = match outpost_tunnel::runtime::build(cli.worker_threads) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check { config_only }) => runtime.block_on(check(config, config_only)),
        Some(Command::Healthcheck { live }) => runtime.block_on(healthcheck(&config, live)),
        Some(Command::Run) | None => runtime.block_on(async {
            tracing::info!(
                worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
                "agent starting"
            );
            let agent = match Agent::new(config) {
                Ok(agent) => agent,
                Err(err @ outpost_agent::AgentError::Health { .. }) => {
                    eprintln!("error: {err}");
                    return ExitCode::FAILURE;
                }
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
            let reload = agent.reload_handle();
            let reloads = tokio::spawn(reload_on_sighup(shutdown.clone(), move || {
                let config = load().map_err(|e| e.to_string())?;
                reload.reload(config).map_err(|e| e.to_string())
            }));
            // Spawned, not awaited here: `block_on` polls its future on the main thread,
            // which is not one of the runtime's workers, so the tunnel driven from there
            // would hand every message across threads twice.
            let ran = tokio::spawn(agent.run(shutdown.clone())).await;
            shutdown.cancel();
            signals.abort();
            let _ = reloads.await;
            match ran {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(%err, "the agent stopped abnormally");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// Reloads the configuration on each SIGHUP until `shutdown`. A configuration that does
/// not load leaves the running one in place.
async fn reload_on_sighup(
    shutdown: CancellationToken,
    reload: impl Fn() -> Result<Vec<String>, String> + Send + 'static,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGHUP; configuration reload disabled");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = hangups.recv() => match reload() {
                Ok(changes) if changes.is_empty() => tracing::info!("configuration reloaded: nothing changed"),
                Ok(changes) => tracing::info!(changes = %changes.join("; "), "configuration reloaded"),
                Err(err) => tracing::error!(%err, "configuration reload refused; the running configuration stays"),
            },
        }
    }
}

async fn check(config: Config, config_only: bool) -> ExitCode {
    println!(
        "ok    config  relay {}; servers: {}; proxy: {}; pins: {}",
        config.relay_url,
        config
            .servers
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        config
            .proxy
            .as_ref()
            .map(|p| format!("{}:{} (from {})", p.host, p.port, p.source))
            .unwrap_or_else(|| "none".into()),
        config.relay_pins.len(),
    );
    if config_only {
        return ExitCode::SUCCESS;
    }
    let tls = match outpost_agent::tunnel::dial::tls_config(&config) {
        Ok(tls) => tls,
        Err(err) => {
            println!("FAIL  trust   {err}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let passed = outpost_agent::check::run(&config, tls, |step| {
        let mark = if step.ok { "ok  " } else { "FAIL" };
        println!("{mark}  {:<7} {}", step.name, step.detail);
        if let Some(fix) = &step.fix {
            println!("      fix: {fix}");
        }
    })
    .await;
    if passed {
        println!("all checks passed: this host can reach the relay");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn healthcheck(config: &Config, live: bool) -> ExitCode {
    let Some(mut addr) = config.health_listen else {
        eprintln!("error: health.listen is not configured");
        return ExitCode::from(EX_CONFIG);
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = if live { "/livez" } else { "/readyz" };
    match outpost_agent::health_get(addr, path).await {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((status, body)) => {
            eprintln!("{path}: HTTP {status}: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("{path}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code for an invalid configuration.
const EX_CONFIG: u8 = 64;
