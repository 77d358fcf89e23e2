//! The relay's configuration: layered loading (defaults < TOML file < `OUTPOST_*` env <
//! flags), validation into a [`Config`] whose fields cannot be invalid, and every default
//! as a named constant. Does not bind sockets or read key material other than the pepper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretBox;
use serde::{Deserialize, Serialize};

use crate::auth::{Environment, Pepper};

/// Validated relay configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the HTTPS listener (tunnels and MCP).
    pub listen: SocketAddr,
    /// Which keys this relay accepts: `live` or `test`.
    pub environment: Environment,
    /// Where the SQLite store lives.
    pub data_dir: PathBuf,
    /// Where the pepper is read from when `OUTPOST_PEPPER` is not set.
    pub pepper_file: PathBuf,
    /// Certificate chain and private key, PEM.
    pub tls: TlsFiles,
    /// Size, count and time limits.
    pub limits: Limits,
    /// Tunnel settings offered to agents.
    pub tunnel: TunnelSettings,
    /// Usage recording.
    pub usage: UsageSettings,
    /// Which `Host` and `Origin` values MCP requests may carry.
    pub http: HttpSettings,
    /// Token buckets and in-flight caps.
    pub rate_limits: RateLimits,
    /// The Prometheus endpoint.
    pub metrics: MetricsSettings,
}

/// The Prometheus endpoint: plain HTTP on its own address, meant for an internal network
/// (its figures span every organisation). Off unless `listen` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9464`.
    pub listen: Option<SocketAddr>,
}

/// Rate limits and quotas, enforced per relay process. Over a limit: HTTP 429 with
/// `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Default token bucket of a key without its own plan: requests per second.
    pub requests_per_second: u32,
    /// Default burst.
    pub burst: u32,
    /// Token bucket per (key, tool): calls per second.
    pub tool_requests_per_second: u32,
    /// Its burst.
    pub tool_burst: u32,
    /// Calls in flight per key.
    pub max_in_flight_per_key: usize,
    /// Calls in flight per agent, over all keys.
    pub max_in_flight_per_agent: usize,
    /// `subscriptions/listen` streams open per key at once. They do not count as calls in
    /// flight (they stay open as long as the client wants).
    pub max_listen_streams_per_key: usize,
    /// Failed authentications per source address and minute before its failures are
    /// answered slowly (with 429).
    pub failures_per_minute: u64,
    /// How long an over-limit failed authentication is held before its answer.
    #[serde(with = "humantime_serde")]
    pub failure_tarpit: Duration,
    /// Keys, tools and sources tracked at once; beyond, new ones are refused (fail closed).
    pub max_tracked: usize,
}

/// Which `Host` and `Origin` values MCP requests may carry: protection against DNS
/// rebinding and against web pages calling the relay from a browser.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Host names (or `host:port`) the relay answers to. Empty: any.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://app.example.com`) allowed to call MCP from a browser. A request
    /// with any other `Origin` gets 403; requests without `Origin` (SDKs, desktop apps)
    /// are not affected. Empty: no browser origin.
    pub allowed_origins: Vec<String>,
}

/// PEM files for the listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Limits, each with a `DEFAULT_*` below.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body a client may POST (413 beyond).
    pub max_body_bytes: usize,
    /// Largest JSON-RPC message through a tunnel, either way.
    pub max_message_bytes: usize,
    /// Client sessions held at once, over all agents.
    pub max_sessions: usize,
    /// TCP connections served at once (clients and agents).
    pub max_connections: usize,
    /// TLS handshakes in progress at once; further connections wait for a turn.
    pub max_handshakes: usize,
    /// TLS handshakes started per second at most, after a burst of `handshake_burst`.
    pub handshakes_per_second: u32,
    /// Handshakes that may start at once after a quiet spell.
    pub handshake_burst: u32,
    /// Streams (client sessions) one agent tunnel may carry at once.
    pub max_streams_per_agent: usize,
    /// Longest a call may take before the client gets a timeout error.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// A client session with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// How long a TLS handshake may take, from the accept: the wait for a turn included.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Interval of SSE keep-alive comments on open response streams.
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// How long a client's SSE response may take nothing of a long answer going on to it
    /// as it arrives before the relay gives that client up.
    #[serde(with = "humantime_serde")]
    pub client_stall_timeout: Duration,
    /// Largest request head (request line and headers); 431 beyond. At least 8 KiB.
    pub max_header_bytes: usize,
    /// Deepest JSON nesting accepted in a request body; 400 beyond.
    pub max_json_depth: usize,
    /// Events a 2025-era session keeps in memory for `Last-Event-ID` resumption, over
    /// all its SSE streams; the oldest is dropped first. 0 keeps none.
    pub replay_events_per_session: usize,
    /// Bytes of messages a session keeps for resumption, over all its SSE streams.
    pub replay_bytes_per_session: usize,
}

/// Tunnel settings offered to agents in the welcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSettings {
    /// Each side pings this often; two silent intervals end the tunnel.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long an agent has to send its hello after the upgrade.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Per-stream credit window in bytes.
    pub initial_window: u32,
    /// Largest payload in one data frame.
    pub chunk_bytes: u32,
}

/// Usage recording: a bounded queue drained by a batching writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSettings {
    /// Events waiting to be written; beyond this, events are dropped and counted.
    pub queue: usize,
    /// Events written per transaction at most.
    pub batch: usize,
    /// Longest an event waits before its batch is written.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long usage events are kept; older ones are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

/// Why a configuration is invalid. The message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A layer could not be read or a key has the wrong type or is unknown.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A key parsed but its value is not acceptable.
    #[error("invalid configuration: key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The pepper could not be read.
    #[error("cannot read the pepper: {0}")]
    Pepper(String),
}

/// Overrides from command-line flags, the last layer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    /// `--listen`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

/// What a config file and the environment may contain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    environment: String,
    data_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pepper_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<TlsFiles>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    tunnel: TunnelSettings,
    #[serde(default)]
    usage: UsageSettings,
    #[serde(default)]
    http: HttpSettings,
    #[serde(default)]
    rate_limits: RateLimits,
    #[serde(default)]
    metrics: MetricsSettings,
}

// === impl Config ===

impl Config {
    /// Loads defaults, then `file` (if given), then `OUTPOST_*` variables (nested keys
    /// with `__`, e.g. `OUTPOST_TLS__CERT_FILE`), then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::from_figment(figment(file, overrides))
    }

    /// Loads only what `init` and `keys` need: the data directory, environment and pepper
    /// location. TLS files are not required for them.
    pub fn load_store_only(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let figment = figment(file, overrides).join(Serialized::default(
            "tls",
            TlsFiles {
                cert_file: PathBuf::new(),
                key_file: PathBuf::new(),
            },
        ));
        Self::from_figment(figment)
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(describe_figment_error)?;
        raw.try_into()
    }

    /// Reads the pepper from `OUTPOST_PEPPER`, or else from `pepper_file`.
    pub fn pepper(&self) -> Result<Pepper, ConfigError> {
        if let Ok(mut value) = std::env::var(PEPPER_ENV) {
            // Trimmed as the file is, so a pepper moved between the two hashes alike.
            let trimmed = value.trim_end().as_bytes().to_vec();
            zeroize::Zeroize::zeroize(&mut value);
            return Pepper::new(SecretBox::new(trimmed.into_boxed_slice()))
                .map_err(|e| ConfigError::Pepper(format!("{PEPPER_ENV}: {e}")));
        }
        let bytes = std::fs::read(&self.pepper_file).map_err(|e| {
            ConfigError::Pepper(format!(
                "{}: {e} (set {PEPPER_ENV}, or run `outpost-relay init` to create one)",
                self.pepper_file.display()
            ))
        })?;
        let trimmed = bytes.trim_ascii_end().to_vec();
        let mut bytes = bytes;
        zeroize::Zeroize::zeroize(&mut bytes);
        Pepper::new(SecretBox::new(trimmed.into_boxed_slice()))
            .map_err(|e| ConfigError::Pepper(format!("{}: {e}", self.pepper_file.display())))
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE)
    }
}

fn figment(file: Option<&Path>, overrides: &Overrides) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment
        .merge(
            Env::prefixed("OUTPOST_")
                .ignore(&IGNORED_ENV)
                .split("__")
                .lowercase(true),
        )
        .merge(Serialized::defaults(overrides))
}

fn describe_figment_error(err: figment::Error) -> ConfigError {
    let messages: Vec<String> = err
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!("{} {source}", m.name),
                    None => m.name.to_string(),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{} ({source})", e.kind)
            } else {
                format!("key `{key}`: {} ({source})", e.kind)
            }
        })
        .collect();
    ConfigError::Load(messages.join("; "))
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen = raw.listen.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            reason: format!("`{}` is not a socket address: {e}", raw.listen),
        })?;
        let environment = match raw.environment.as_str() {
            "live" => Environment::Live,
            "test" => Environment::Test,
            other => {
                return Err(ConfigError::Invalid {
                    key: "environment",
                    reason: format!("`{other}` is neither `live` nor `test`"),
                });
            }
        };
        let tls = raw.tls.ok_or(ConfigError::Invalid {
            key: "tls",
            reason: "missing: set tls.cert_file and tls.key_file".into(),
        })?;
        check(
            raw.limits.max_body_bytes > 0,
            "limits.max_body_bytes",
            "must be positive",
        )?;
        check(
            raw.limits.max_message_bytes >= raw.limits.max_body_bytes,
            "limits.max_message_bytes",
            "must be at least limits.max_body_bytes",
        )?;
        check(
            raw.limits.max_sessions > 0,
            "limits.max_sessions",
            "must be positive",
        )?;
        check(
            raw.limits.max_connections > 0,
            "limits.max_connections",
            "must be positive",
        )?;
        check(
            raw.limits.max_handshakes > 0
                && raw.limits.handshakes_per_second > 0
                && raw.limits.handshake_burst > 0,
            "limits",
            "max_handshakes, handshakes_per_second and handshake_burst must be positive",
        )?;
        check(
            raw.limits.max_streams_per_agent > 0,
            "limits.max_streams_per_agent",
            "must be positive",
        )?;
        check(
            raw.tunnel.heartbeat_interval >= Duration::from_millis(100),
            "tunnel.heartbeat_interval",
            "must be at least 100ms",
        )?;
        check(
            (1024..=MAX_CHUNK).contains(&raw.tunnel.chunk_bytes),
            "tunnel.chunk_bytes",
            "must be between 1 KiB and 512 KiB",
        )?;
        check(
            raw.tunnel.initial_window >= raw.tunnel.chunk_bytes,
            "tunnel.initial_window",
            "must be at least tunnel.chunk_bytes",
        )?;
        check(
            raw.usage.queue > 0 && raw.usage.batch > 0,
            "usage",
            "queue and batch must be positive",
        )?;
        let limits = &raw.limits;
        for (key, value) in [
            ("limits.call_timeout", limits.call_timeout),
            ("limits.session_idle_timeout", limits.session_idle_timeout),
            ("limits.handshake_timeout", limits.handshake_timeout),
            ("limits.sse_keepalive", limits.sse_keepalive),
            ("limits.client_stall_timeout", limits.client_stall_timeout),
            ("tunnel.hello_timeout", raw.tunnel.hello_timeout),
            ("usage.flush_interval", raw.usage.flush_interval),
            ("usage.retention", raw.usage.retention),
            ("rate_limits.failure_tarpit", raw.rate_limits.failure_tarpit),
        ] {
            check(!value.is_zero(), key, "must be longer than zero")?;
        }
        let rates = &raw.rate_limits;
        check(
            rates.requests_per_second > 0
                && rates.burst > 0
                && rates.tool_requests_per_second > 0
                && rates.tool_burst > 0,
            "rate_limits",
            "rates and bursts must be positive",
        )?;
        check(
            rates.max_in_flight_per_key > 0
                && rates.max_in_flight_per_agent > 0
                && rates.max_tracked > 0,
            "rate_limits",
            "in-flight caps and max_tracked must be positive",
        )?;
        check(
            raw.limits.max_header_bytes >= 8 * 1024,
            "limits.max_header_bytes",
            "must be at least 8192",
        )?;
        check(
            raw.limits.max_json_depth >= 8,
            "limits.max_json_depth",
            "must be at least 8",
        )?;
        let pepper_file = raw
            .pepper_file
            .unwrap_or_else(|| raw.data_dir.join(PEPPER_FILE));
        Ok(Config {
            listen,
            environment,
            data_dir: raw.data_dir,
            pepper_file,
            tls,
            limits: raw.limits,
            tunnel: raw.tunnel,
            usage: raw.usage,
            http: raw.http,
            rate_limits: raw.rate_limits,
            metrics: raw.metrics,
        })
    }
}

fn check(ok: bool, key: &'static str, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            reason: reason.to_owned(),
        })
    }
}

// === defaults ===

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            environment: DEFAULT_ENVIRONMENT.to_owned(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            pepper_file: None,
            tls: None,
            limits: Limits::default(),
            tunnel: TunnelSettings::default(),
            usage: UsageSettings::default(),
            http: HttpSettings::default(),
            rate_limits: RateLimits::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            requests_per_second: DEFAULT_RATE,
            burst: DEFAULT_BURST,
            tool_requests_per_second: DEFAULT_TOOL_RATE,
            tool_burst: DEFAULT_TOOL_BURST,
            max_in_flight_per_key: DEFAULT_IN_FLIGHT_PER_KEY,
            max_in_flight_per_agent: DEFAULT_IN_FLIGHT_PER_AGENT,
            max_listen_streams_per_key: DEFAULT_LISTEN_STREAMS_PER_KEY,
            failures_per_minute: DEFAULT_FAILURES_PER_MINUTE,
            failure_tarpit: DEFAULT_FAILURE_TARPIT,
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshakes_per_second: DEFAULT_HANDSHAKES_PER_SECOND,
            handshake_burst: DEFAULT_HANDSHAKE_BURST,
            max_streams_per_agent: DEFAULT_MAX_STREAMS_PER_AGENT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            session_idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
            client_stall_timeout: DEFAULT_CLIENT_STALL_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            replay_events_per_session: DEFAULT_REPLAY_EVENTS_PER_SESSION,
            replay_bytes_per_session: DEFAULT_REPLAY_BYTES_PER_SESSION,
        }
    }
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            initial_window: DEFAULT_INITIAL_WINDOW,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        }
    }
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            queue: DEFAULT_USAGE_QUEUE,
            batch: DEFAULT_USAGE_BATCH,
            flush_interval: DEFAULT_USAGE_FLUSH_INTERVAL,
            retention: DEFAULT_USAGE_RETENTION,
        }
    }
}

/// Environment variable holding the pepper; read directly, never through figment.
pub const PEPPER_ENV: &str = "OUTPOST_PEPPER";
/// Variables with the `OUTPOST_` prefix that are not configuration keys.
const IGNORED_ENV: [&str; 6] = [
    "PEPPER",
    "AGENT_KEY",
    "ADMIN_KEY",
    "CONFIG",
    "LOG_FORMAT",
    "WORKER_THREADS",
];
/// Name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "outpost.db";
/// Name of the pepper file inside the data directory, when no other is configured.
pub const PEPPER_FILE: &str = "pepper";

const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
const DEFAULT_ENVIRONMENT: &str = "live";
const DEFAULT_DATA_DIR: &str = "./outpost-data";
const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_MAX_SESSIONS: usize = 10_000;
const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Handshakes in flight at once: far more than the cores need for CPU-bound handshakes,
/// and enough for a fleet across a slow network (256 turns over a 100 ms round trip still
/// allow about 2,500 handshakes a second), while a storm's waiting connections hold no
/// TLS state yet.
const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// About half a core of handshakes (a full TLS 1.3 handshake costs the relay about 250 µs
/// of CPU), so a reconnect storm leaves room for the calls already flowing; 10,000 agents
/// can be back in 5 s.
const DEFAULT_HANDSHAKES_PER_SECOND: u32 = 2_000;
/// Handshakes that may start at once after a quiet spell.
const DEFAULT_HANDSHAKE_BURST: u32 = 256;
const DEFAULT_MAX_STREAMS_PER_AGENT: usize = 1_024;
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);
/// A minute: the response takes a part only when hyper's buffer and the socket's have room,
/// so a client reading slowly but steadily may take nothing for several seconds.
const DEFAULT_CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_INITIAL_WINDOW: u32 = 1024 * 1024;
const DEFAULT_CHUNK_BYTES: u32 = 64 * 1024;
const MAX_CHUNK: u32 = 512 * 1024;
const DEFAULT_USAGE_QUEUE: usize = 10_000;
const DEFAULT_USAGE_BATCH: usize = 512;
const DEFAULT_USAGE_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
const DEFAULT_USAGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
const DEFAULT_MAX_JSON_DEPTH: usize = 64;
const DEFAULT_REPLAY_EVENTS_PER_SESSION: usize = 1_024;
const DEFAULT_REPLAY_BYTES_PER_SESSION: usize = 4 * 1024 * 1024;
/// The `medium` plan: 100 requests per second.
const DEFAULT_RATE: u32 = 100;
const DEFAULT_BURST: u32 = 200;
const DEFAULT_TOOL_RATE: u32 = 100;
const DEFAULT_TOOL_BURST: u32 = 200;
const DEFAULT_IN_FLIGHT_PER_KEY: usize = 64;
const DEFAULT_IN_FLIGHT_PER_AGENT: usize = 512;
const DEFAULT_LISTEN_STREAMS_PER_KEY: usize = 16;
const DEFAULT_FAILURES_PER_MINUTE: u64 = 30;
const DEFAULT_FAILURE_TARPIT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_TRACKED: usize = 100_000;
