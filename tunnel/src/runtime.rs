//! What both binaries set up the same way: logging that cannot print message content, and
//! the signals that start a graceful shutdown. Lives here because it is shared, and because
//! the content rule is about the WebSocket library this crate drives.

use tokio_util::sync::CancellationToken;

/// Log filter directives that keep message content out of logs at every level: the
/// WebSocket library prints whole frames, payload included, at trace level. They are added
/// after the user's filter, which pins those targets at `info` whatever the user asked
/// for, so `LOG_LEVEL=trace` still cannot log a tool's arguments.
pub const CONTENT_SAFE_LOG_DIRECTIVES: [&str; 2] = ["tungstenite=info", "tokio_tungstenite=info"];

/// Installs the global log subscriber, writing to stderr: the filter from `LOG_LEVEL`, else
/// `RUST_LOG`, else `info`, plus [`CONTENT_SAFE_LOG_DIRECTIVES`]; JSON lines if `json`,
/// plain text without colours unless stderr is a terminal.
///
/// A line that cannot be written (stderr is a pipe whose reader went away: a log shipper
/// restarted, a parent that died) is dropped silently. tracing-subscriber would otherwise
/// report the failure with `eprintln!`, which panics on the same broken pipe, in whichever
/// task logged: the signal handler among them, and a relay or agent that cannot stop.
pub fn init_logging(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for directive in CONTENT_SAFE_LOG_DIRECTIVES {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Colours only for a person at a terminal: a log shipper, `docker logs` or journald
    // would keep the escape codes in every line, and a search for `agent=laptop` would
    // miss them all.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The environment variable that sets how many worker threads the relay's or the agent's
/// runtime has, as their `--worker-threads` does.
pub const WORKER_THREADS_ENV: &str = "OUTPOST_WORKER_THREADS";

/// Builds the process's tokio runtime with `workers` worker threads, or, when `None`, one
/// per CPU the process may use (`available_parallelism`, which counts a cgroup's CPU quota
/// and the CPUs the process is bound to). Always set here, so tokio's own
/// `TOKIO_WORKER_THREADS` has no say: the number is the one the process logs.
///
/// More workers than one let a busy process use several cores, at a price paid at every
/// load: a task woken on one worker while another sleeps wakes that one too, so that it
/// may steal work. On two cores shared with other busy processes, one worker spent about a
/// quarter less CPU per call and added less latency (docs/benchmarks.md).
pub fn build(workers: Option<std::num::NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        Some(workers) => workers,
        None => std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.get())
        .enable_all()
        .build()
}

/// Registers for SIGTERM (what Kubernetes and systemd send) and SIGINT now, and returns a
/// future that cancels `shutdown` on the first of them. Registering before the program
/// says it is ready means no early signal can kill it without a graceful stop.
pub fn cancel_on_signal(
    shutdown: CancellationToken,
    what: &'static str,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: {what}"),
            _ = int.recv() => tracing::info!("SIGINT: {what}"),
        }
        shutdown.cancel();
    }
}
