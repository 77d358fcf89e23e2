//! Starts what the workloads measure, each as a process of its own on 127.0.0.1, so that
//! each one's memory and CPU can be read from /proc: the upstream MCP servers (this binary,
//! `upstream-http` for the 2025 era and `upstream-http-2026` for the 2026 era), the real
//! `outpost-relay` and `outpost-agent` release binaries, the floor's forwarders (this
//! binary, `forward`) in front of the same HTTP upstreams, and the peers (supergateway,
//! mcp-proxy) bridging the same upstream over stdio. Names the targets the load generator
//! calls, each with the protocol era it is spoken to in. Does not measure.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use outpost_test_support::Process;
use outpost_tunnel::runtime::WORKER_THREADS_ENV;
use tempfile::TempDir;

use crate::client::{Endpoint, Era};

/// The binaries the bench starts: found next to its own executable.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    pub(crate) relay: PathBuf,
    pub(crate) agent: PathBuf,
    /// This executable, for `upstream-stdio` and `upstream-http`.
    pub(crate) bench: PathBuf,
    /// Worker threads of the relay's, the agent's and the floor's forwarders' runtimes;
    /// `None`: each one's default.
    workers: Option<NonZeroUsize>,
}

impl Binaries {
    /// The environment the relay, the agent and the floor's forwarders start with: their
    /// worker threads, or nothing (a variable of the bench's own environment does not pass
    /// through, so what runs is what the bench reports).
    pub(crate) fn runtime_env(&self) -> Vec<(&'static str, String)> {
        match self.workers {
            Some(workers) => vec![(WORKER_THREADS_ENV, workers.to_string())],
            None => vec![],
        }
    }

    /// Finds the relay and agent beside this executable. Under `cargo run` (`CARGO` set),
    /// builds them first with the same profile, so a run never measures stale binaries.
    pub(crate) fn locate(build: bool, workers: Option<NonZeroUsize>) -> anyhow::Result<Self> {
        let bench = std::env::current_exe()?;
        let dir = bench.parent().context("executable directory")?.to_owned();
        if build && let Some(cargo) = std::env::var_os("CARGO") {
            let mut command = std::process::Command::new(cargo);
            command.args([
                "build",
                "--quiet",
                "-p",
                "outpost-relay",
                "-p",
                "outpost-agent",
            ]);
            if dir.file_name().is_some_and(|name| name == "release") {
                command.arg("--release");
            }
            let status = command
                .current_dir(outpost_test_support::workspace_root())
                .status()?;
            anyhow::ensure!(
                status.success(),
                "building outpost-relay and outpost-agent failed"
            );
        }
        let binaries = Self {
            relay: dir.join("outpost-relay"),
            agent: dir.join("outpost-agent"),
            bench,
            workers,
        };
        for path in [&binaries.relay, &binaries.agent] {
            anyhow::ensure!(
                path.exists(),
                "{} is missing: `cargo build --release --bins` (or run the bench with `cargo run`)",
                path.display()
            );
        }
        Ok(binaries)
    }
}

// === relay ===

/// A relay's lasting state in a temporary directory: development CA and certificate, the
/// SQLite store with organisation `default`, a client key. Survives relay restarts.
pub(crate) struct RelayHome {
    dir: TempDir,
    relay: PathBuf,
    /// The relay's environment ([`Binaries::runtime_env`]).
    env: Vec<(&'static str, String)>,
    /// The CA clients and agents trust.
    pub(crate) ca: PathBuf,
    /// A client key (owner of `default`).
    pub(crate) client_key: String,
}

/// A running relay process.
pub(crate) struct RelayProcess {
    pub(crate) process: Process,
    pub(crate) addr: SocketAddr,
}

impl RelayHome {
    /// Creates certificates, the store and a client key with the relay's own subcommands.
    pub(crate) async fn create(binaries: &Binaries) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let relay = binaries.relay.clone();
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        run(&relay, &["dev-certs", "--out", &path("tls")]).await?;
        let init = run(
            &relay,
            &["--data-dir", &path("data"), "init", "--org", "default"],
        )
        .await?;
        let client_key = init
            .lines()
            .rev()
            .find(|line| line.starts_with("pk_"))
            .context("init printed no key")?
            .to_owned();
        std::fs::write(
            dir.path().join("relay.toml"),
            format!(
                // Rate limits far above what one machine can send: the bench measures the
                // path, and the buckets it still passes through cost their real price.
                "data_dir = \"{}\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n\
                 [rate_limits]\nrequests_per_second = 10000000\nburst = 10000000\n\
                 tool_requests_per_second = 10000000\ntool_burst = 10000000\n\
                 max_in_flight_per_key = 1000000\nmax_in_flight_per_agent = 1000000\n",
                path("data"),
                path("tls/cert.pem"),
                path("tls/key.pem"),
            ),
        )?;
        Ok(Self {
            ca: dir.path().join("tls/ca.pem"),
            dir,
            relay,
            env: binaries.runtime_env(),
            client_key,
        })
    }

    /// The data directory (store and pepper).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A directory for files of this run (agent configs and keys).
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues an agent key with `outpost-relay keys create`.
    pub(crate) async fn agent_key(&self, agent: &str) -> anyhow::Result<String> {
        let data = self.data_dir().to_string_lossy().into_owned();
        let out = run(
            &self.relay,
            &[
                "--data-dir",
                &data,
                "keys",
                "create",
                "--agent",
                agent,
                "--quiet",
            ],
        )
        .await?;
        Ok(out
            .lines()
            .find(|line| line.starts_with("ak_"))
            .context("keys create printed no key")?
            .to_owned())
    }

    /// Starts the relay on `listen` (port 0: any), optionally under a wrapper command
    /// (valgrind), and waits until it listens.
    pub(crate) async fn spawn(
        &self,
        listen: SocketAddr,
        wrapper: &[String],
    ) -> anyhow::Result<RelayProcess> {
        let config = self
            .dir
            .path()
            .join("relay.toml")
            .to_string_lossy()
            .into_owned();
        let listen = listen.to_string();
        let relay = self.relay.to_string_lossy().into_owned();
        let mut argv: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        argv.extend([
            relay.as_str(),
            "--config",
            &config,
            "serve",
            "--listen",
            &listen,
        ]);
        let env = env_refs(&self.env);
        let mut process = Process::spawn(Path::new(argv[0]), &argv[1..], &env)?;
        let addr = listening_on(&mut process).await?;
        Ok(RelayProcess { process, addr })
    }
}

impl RelayProcess {
    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.pid().unwrap_or(0)
    }

    /// `https://localhost:PORT/mcp/AGENT/SERVER`.
    pub(crate) fn mcp_url(&self, agent: &str, server: &str) -> String {
        format!(
            "https://localhost:{}/mcp/{agent}/{server}",
            self.addr.port()
        )
    }
}

// === the stack of workloads a, b, c, g ===

/// Which path a target measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The rmcp HTTP server, called directly: the baseline every ratio divides by.
    Direct,
    /// Relay (TLS) → tunnel → agent → the rmcp HTTP server.
    OutpostHttp,
    /// Relay (TLS) → tunnel → agent → the stdio server (one child per session).
    OutpostStdio,
    /// supergateway (Node) → the stdio server, plain HTTP.
    Supergateway,
    /// mcp-proxy (Python) → the stdio server, plain HTTP.
    McpProxy,
    /// Two forwarders (TLS in, then TLS and plain TCP out) → the HTTP server: what two
    /// more hops cost when nothing reads the bytes; or one (`--floor-hops 1`: TLS in,
    /// plain TCP out). See `forward.rs`.
    Floor,
}

/// One thing the load generator calls.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) path: Route,
    pub(crate) endpoint: Endpoint,
}

impl Target {
    /// The protocol era the target is spoken to in.
    pub(crate) fn era(&self) -> Era {
        self.endpoint.era()
    }
}

/// Everything workloads a, b, c and f measure, started once.
pub(crate) struct Stack {
    _upstream: Process,
    _upstream_2026: Process,
    pub(crate) home: RelayHome,
    pub(crate) relay: RelayProcess,
    pub(crate) agent: Process,
    peers: Vec<(Route, Process)>,
    /// Each era's forwarders, in the order the client's bytes cross them.
    floors: Vec<(Era, Vec<Process>)>,
    pub(crate) targets: Vec<Target>,
}

impl Stack {
    /// Starts the upstream, relay, agent, the floor's `floor_hops` forwarders per era, and
    /// (when `peers`) supergateway and mcp-proxy. `relay_wrapper` and `agent_wrapper` run
    /// the relay and the agent under another program (valgrind).
    pub(crate) async fn start(
        binaries: &Binaries,
        peers: bool,
        floor_hops: FloorHops,
        relay_wrapper: &[String],
        agent_wrapper: &[String],
    ) -> anyhow::Result<Self> {
        let bench = binaries.bench.to_string_lossy().into_owned();
        let (upstream, upstream_addr) = start_upstream(binaries, "upstream-http").await?;
        let (upstream_2026, upstream_2026_addr) =
            start_upstream(binaries, "upstream-http-2026").await?;
        let (upstream_url, upstream_2026_url) = (
            format!("http://{upstream_addr}/mcp"),
            format!("http://{upstream_2026_addr}/mcp"),
        );

        let home = RelayHome::create(binaries).await?;
        let (floor, floor_url) = start_floor(binaries, &home, floor_hops, upstream_addr).await?;
        let (floor_2026, floor_2026_url) =
            start_floor(binaries, &home, floor_hops, upstream_2026_addr).await?;
        let [floor_name, floor_2026_name] = floor_hops.names();
        let relay = home
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)), relay_wrapper)
            .await?;
        let key_file = home.path("agent.key");
        std::fs::write(&key_file, home.agent_key(AGENT).await?)?;
        let agent_config = home.path("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "relay_url = \"wss://localhost:{port}\"\nkey_file = \"{key}\"\nca_file = \"{ca}\"\n\n\
                 [servers.rmcp]\ntype = \"http\"\nurl = \"{upstream_url}\"\n\n\
                 [servers.stdio]\ntype = \"stdio\"\ncommand = \"{bench}\"\nargs = [\"upstream-stdio\"]\n\n\
                 [servers.http2026]\ntype = \"http\"\nurl = \"{upstream_2026_url}\"\n\n\
                 [servers.stdio2026]\ntype = \"stdio\"\ncommand = \"{bench}\"\nargs = [\"upstream-stdio-2026\"]\n",
                port = relay.addr.port(),
                key = key_file.display(),
                ca = home.ca.display(),
            ),
        )?;
        let config = agent_config.to_string_lossy().into_owned();
        let agent_binary = binaries.agent.to_string_lossy().into_owned();
        let mut argv: Vec<&str> = agent_wrapper.iter().map(String::as_str).collect();
        argv.extend([agent_binary.as_str(), "--config", &config]);
        let env = binaries.runtime_env();
        let mut agent = Process::spawn(Path::new(argv[0]), &argv[1..], &env_refs(&env))?;
        agent.wait_for("tunnel established").await?;

        let key = Some(home.client_key.clone());
        let through = |server: &str, era: Era| {
            Endpoint::new(
                relay.mcp_url(AGENT, server),
                key.clone(),
                Some(&home.ca),
                era,
            )
        };
        let mut targets = vec![
            Target {
                name: "direct (rmcp HTTP)",
                path: Route::Direct,
                endpoint: Endpoint::new(upstream_url.clone(), None, None, Era::Sessions)?,
            },
            Target {
                name: "outpost → HTTP",
                path: Route::OutpostHttp,
                endpoint: through("rmcp", Era::Sessions)?,
            },
            Target {
                name: "outpost → stdio",
                path: Route::OutpostStdio,
                endpoint: through("stdio", Era::Sessions)?,
            },
            Target {
                name: floor_name,
                path: Route::Floor,
                endpoint: Endpoint::new(floor_url, None, Some(&home.ca), Era::Sessions)?,
            },
        ];
        let mut peer_processes = Vec::new();
        if peers {
            for (path, name) in [
                (Route::Supergateway, "supergateway → stdio"),
                (Route::McpProxy, "mcp-proxy → stdio"),
            ] {
                match start_peer(path, &bench).await {
                    Ok((process, url)) => {
                        peer_processes.push((path, process));
                        targets.push(Target {
                            name,
                            path,
                            endpoint: Endpoint::new(url, None, None, Era::Sessions)?,
                        });
                    }
                    Err(err) => eprintln!("note: {name} is left out: {err:#}"),
                }
            }
        }
        // The 2026 era: the same tools on the stateless upstream, directly and through
        // Outpost over HTTP and stdio, and the rmcp upstream (2025) bridged by the relay.
        targets.extend([
            Target {
                name: "direct 2026 (Rust HTTP)",
                path: Route::Direct,
                endpoint: Endpoint::new(upstream_2026_url, None, None, Era::Stateless)?,
            },
            Target {
                name: "outpost 2026 → HTTP",
                path: Route::OutpostHttp,
                endpoint: through("http2026", Era::Stateless)?,
            },
            Target {
                name: "outpost 2026 → stdio",
                path: Route::OutpostStdio,
                endpoint: through("stdio2026", Era::Stateless)?,
            },
            Target {
                name: "outpost 2026 → rmcp HTTP, bridged",
                path: Route::OutpostHttp,
                endpoint: through("rmcp", Era::Stateless)?,
            },
            Target {
                name: floor_2026_name,
                path: Route::Floor,
                endpoint: Endpoint::new(floor_2026_url, None, Some(&home.ca), Era::Stateless)?,
            },
        ]);
        Ok(Self {
            _upstream: upstream,
            _upstream_2026: upstream_2026,
            home,
            relay,
            agent,
            peers: peer_processes,
            floors: vec![(Era::Sessions, floor), (Era::Stateless, floor_2026)],
            targets,
        })
    }

    /// Keeps the direct paths and the targets whose names contain one of `words`; all of
    /// them when `words` is empty. The forwarders of a floor left out are stopped (dropped),
    /// so that no idle process sits beside the measured ones.
    pub(crate) fn keep(mut self, words: &[String]) -> Self {
        if !words.is_empty() {
            self.targets.retain(|t| {
                t.path == Route::Direct || words.iter().any(|w| t.name.contains(w.as_str()))
            });
        }
        let targets = &self.targets;
        self.floors.retain(|(era, _)| {
            targets
                .iter()
                .any(|t| t.path == Route::Floor && t.era() == *era)
        });
        self
    }

    /// The targets spoken to in `era`, the direct one first.
    pub(crate) fn targets_of(&self, era: Era) -> Vec<&Target> {
        self.targets.iter().filter(|t| t.era() == era).collect()
    }

    /// Stops the agent, then the relay, with SIGTERM (a relay or agent under valgrind
    /// writes its profile on a clean exit); the upstream, the forwarders and the peers are
    /// killed when dropped.
    pub(crate) async fn stop(mut self) {
        let _ = self.agent.terminate().await;
        let _ = self.relay.process.terminate().await;
    }

    /// Keeps what the relay, the agent and the forwarders logged in `target/bench/logs/`,
    /// for a run whose figures show errors.
    fn save_logs(&self) {
        let dir = outpost_test_support::workspace_root().join("target/bench/logs");
        let saved = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(dir.join("relay.log"), self.relay.process.output())?;
            std::fs::write(dir.join("agent.log"), self.agent.output())?;
            // A run with one forwarder must not leave an earlier run's second one's log.
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("forwarder-"))
                {
                    std::fs::remove_file(path)?;
                }
            }
            for (era, forwarders) in &self.floors {
                for (n, process) in forwarders.iter().enumerate() {
                    let name = format!("forwarder-{}-{}.log", n + 1, era.label());
                    std::fs::write(dir.join(name), process.output())?;
                }
            }
            Ok(())
        });
        match saved {
            Ok(()) => eprintln!("relay, agent and forwarder logs: {}", dir.display()),
            Err(err) => eprintln!("note: the logs were not saved in {}: {err}", dir.display()),
        }
    }

    /// The processes whose memory a target's bridge uses: the relay and agent for Outpost,
    /// the forwarders for the floor, the peer's process otherwise.
    pub(crate) fn bridge_pids(&self, target: &Target) -> Vec<(&'static str, u32)> {
        match target.path {
            Route::Direct => Vec::new(),
            Route::Floor => self
                .floors
                .iter()
                .filter(|(era, _)| *era == target.era())
                .flat_map(|(_, forwarders)| {
                    FORWARDER_LABELS
                        .iter()
                        .zip(forwarders)
                        .map(|(label, process)| (*label, process.pid().unwrap_or(0)))
                })
                .collect(),
            Route::OutpostHttp | Route::OutpostStdio => vec![
                ("relay", self.relay.pid()),
                ("agent", self.agent.pid().unwrap_or(0)),
            ],
            other => self
                .peers
                .iter()
                .filter(|(p, _)| *p == other)
                .map(|(_, process)| ("bridge", process.pid().unwrap_or(0)))
                .collect(),
        }
    }
}

impl Drop for Stack {
    /// Whether the run ended, failed or was interrupted: the logs are kept, and every
    /// process is killed as its handle drops.
    fn drop(&mut self) {
        self.save_logs();
    }
}

/// The position in `targets` of the direct path of `era`: what that era's ratios divide by.
pub(crate) fn direct_of(targets: &[Target], era: Era) -> usize {
    targets
        .iter()
        .position(|t| t.path == Route::Direct && t.era() == era)
        .expect("every era has a direct target")
}

/// Starts this binary as an upstream server (`mode`); returns it and its address (its MCP
/// URL is `http://ADDR/mcp`).
async fn start_upstream(binaries: &Binaries, mode: &str) -> anyhow::Result<(Process, SocketAddr)> {
    let mut upstream = Process::spawn(&binaries.bench, &[mode], &[])?;
    let addr = listening_on(&mut upstream).await?;
    Ok((upstream, addr))
}

/// How many forwarders the floor targets cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FloorHops {
    /// One: TLS in, plain TCP to the server. No relay design can do less.
    #[value(name = "1")]
    One,
    /// Two: TLS in, TLS to the second, plain TCP to the server. As many hops and
    /// encryptions as a call through the relay and the agent.
    #[value(name = "2")]
    Two,
}

impl FloorHops {
    /// The floor targets' names, 2025 era then 2026 era.
    fn names(self) -> [&'static str; 2] {
        match self {
            Self::One => [
                "floor: 1 TLS forwarder → HTTP",
                "floor 2026: 1 TLS forwarder → HTTP",
            ],
            Self::Two => [
                "floor: 2 TLS forwarders → HTTP",
                "floor 2026: 2 TLS forwarders → HTTP",
            ],
        }
    }
}

/// Starts the floor's forwarders in front of the HTTP server at `upstream`, with the
/// relay's certificate: the client dials the first over TLS; with two, the first dials the
/// second over TLS; the last dials the server over plain TCP. Returns them in the order
/// the client's bytes cross them, and the MCP URL a client calls.
async fn start_floor(
    binaries: &Binaries,
    home: &RelayHome,
    hops: FloorHops,
    upstream: SocketAddr,
) -> anyhow::Result<(Vec<Process>, String)> {
    let text = |path: PathBuf| path.to_string_lossy().into_owned();
    let (cert, key, ca) = (
        text(home.path("tls/cert.pem")),
        text(home.path("tls/key.pem")),
        text(home.ca.clone()),
    );
    let env = binaries.runtime_env();
    let spawn = |next: &str, ca: Option<&str>| {
        let mut args = vec!["forward", cert.as_str(), key.as_str(), next];
        args.extend(ca);
        Process::spawn(&binaries.bench, &args, &env_refs(&env))
    };
    let mut last = spawn(&upstream.to_string(), None)?;
    let last_addr = listening_on(&mut last).await?;
    let (forwarders, first_addr) = match hops {
        FloorHops::One => (vec![last], last_addr),
        FloorHops::Two => {
            let mut first = spawn(&last_addr.to_string(), Some(&ca))?;
            let first_addr = listening_on(&mut first).await?;
            (vec![first, last], first_addr)
        }
    };
    let port = first_addr.port();
    Ok((forwarders, format!("https://localhost:{port}/mcp")))
}

/// The address a child process printed as `listening on ADDR`: the relay, or this binary
/// as an upstream or a forwarder.
async fn listening_on(process: &mut Process) -> anyhow::Result<SocketAddr> {
    let line = process.wait_for("listening on").await?;
    line.rsplit(' ')
        .next()
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("no address in {line:?}"))
}

/// Starts a peer bridging `bench upstream-stdio` to Streamable HTTP on a free port; returns
/// it and its MCP URL once it accepts connections.
async fn start_peer(path: Route, bench: &str) -> anyhow::Result<(Process, String)> {
    let tools = outpost_test_support::tools_dir();
    let port = free_port()?.to_string();
    let stdio_command = format!("{bench} upstream-stdio");
    let process = match path {
        Route::Supergateway => {
            let script = tools.join("node_modules/supergateway/dist/index.js");
            if !script.exists() {
                bail!(
                    "{} is missing: run scripts/setup-tools.sh",
                    script.display()
                );
            }
            let node = outpost_test_support::find_program("node");
            Process::spawn(
                &node,
                &[
                    &script.to_string_lossy(),
                    "--stdio",
                    &stdio_command,
                    "--outputTransport",
                    "streamableHttp",
                    "--stateful",
                    "--port",
                    &port,
                    "--logLevel",
                    "none",
                ],
                &[],
            )?
        }
        Route::McpProxy => {
            let program = tools.join("venv/bin/mcp-proxy");
            if !program.exists() {
                bail!(
                    "{} is missing: run scripts/setup-tools.sh",
                    program.display()
                );
            }
            Process::spawn(
                &program,
                &[
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--log-level",
                    "WARNING",
                    bench,
                    "upstream-stdio",
                ],
                &[],
            )?
        }
        _ => bail!("not a peer"),
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = tokio::time::Instant::now() + PEER_START;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "it did not listen within {PEER_START:?}: {}",
                process.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((process, format!("http://{addr}/mcp")))
}

/// A port that was free a moment ago, for programs that take a port but cannot report one.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs a relay subcommand to completion; returns its output.
async fn run(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut process = Process::spawn(program, args, &[])?;
    let code = process.wait().await?;
    let output = process.output();
    anyhow::ensure!(
        code == Some(0),
        "{} {}: {output}",
        program.display(),
        args.join(" ")
    );
    Ok(output)
}

/// The floor's forwarders, in the order the client's bytes cross them.
const FORWARDER_LABELS: [&str; 2] = ["forwarder 1", "forwarder 2"];
/// The agent's name in the stack.
pub(crate) const AGENT: &str = "bench";
const PEER_START: Duration = Duration::from_secs(20);

/// `env` as [`Process::spawn`] takes it.
fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}
