//! The agent's configuration: layered loading (defaults < TOML file < `OUTPOST_*` env),
//! `${env:NAME}` and `${file:PATH}` references resolved into secrets, and validation into a
//! [`Config`] whose fields cannot be invalid. Every default is a named constant. Does not
//! dial, spawn or listen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::policy::ToolPolicy;

/// Validated agent configuration.
#[derive(Debug)]
pub struct Config {
    /// The relay, `wss://host[:port]`.
    pub relay_url: url::Url,
    /// The agent key, from `OUTPOST_AGENT_KEY` or `key_file`.
    pub key: SecretString,
    /// CA certificates (PEM) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Connection and reconnection timing.
    pub tunnel: TunnelSettings,
    /// Local servers by name, in name order.
    pub servers: BTreeMap<String, ServerConfig>,
    /// The HTTP CONNECT proxy to reach the relay through, if any applies to it.
    pub proxy: Option<Proxy>,
    /// SHA-256 pins of the relay's public key (SubjectPublicKeyInfo); empty: no pinning.
    pub relay_pins: Vec<[u8; 32]>,
    /// Local address of the health and metrics endpoint, if enabled.
    pub health_listen: Option<std::net::SocketAddr>,
}

/// An HTTP proxy reached with CONNECT.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// Host name or address of the proxy.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<SecretString>,
    /// Where the setting came from (`proxy` or the variable's name), for messages.
    pub source: String,
}

/// Connection and reconnection timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSettings {
    /// TCP connect, TLS and WebSocket handshakes together.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// A tunnel that lived this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub healthy_after: Duration,
    /// On SIGTERM, how long in-flight calls may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Upstream sessions (relay streams) served at once.
    pub max_streams: usize,
}

/// One local MCP server.
#[derive(Debug)]
pub struct ServerConfig {
    /// Its name, as clients address it.
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// What it may be asked, and how much at once.
    pub policy: crate::policy::ToolPolicy,
}

/// How a local server is reached.
#[derive(Debug)]
pub enum Transport {
    /// A child process speaking newline-delimited JSON-RPC on stdin/stdout.
    Stdio(StdioConfig),
    /// A local Streamable HTTP endpoint.
    Http(HttpConfig),
}

/// A stdio server.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    /// Program to run.
    pub command: String,
    /// Its arguments. Not secret: argv is visible to every local user.
    pub args: Vec<String>,
    /// Environment given to the child, resolved. The child gets nothing else.
    pub env: Vec<(String, SecretString)>,
    /// For each entry of `env`: whether its value came from a reference, so is a secret.
    pub env_is_secret: Vec<bool>,
    /// Each `${env:}`/`${file:}` value on its own, as resolved into `env`, so that a
    /// server echoing only the token of `Bearer ${file:...}` is caught too.
    pub reference_values: Vec<SecretString>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
}

/// A Streamable HTTP server.
#[derive(Debug)]
pub struct HttpConfig {
    /// Its MCP endpoint.
    pub url: url::Url,
    /// Headers sent with every request, resolved (credentials, typically).
    pub headers: Vec<(http::HeaderName, SecretString)>,
    /// Each `${env:}`/`${file:}` value on its own, as resolved into `headers`.
    pub reference_values: Vec<SecretString>,
    /// How long the server may write nothing in the middle of a long answer that is going
    /// on to the relay as it arrives before that answer is given up.
    pub answer_stall_timeout: Duration,
}

/// [`HttpConfig::answer_stall_timeout`] when the configuration names none.
pub const DEFAULT_ANSWER_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the configuration is invalid. The message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A layer could not be read, or a key is unknown or of the wrong type.
    #[error("invalid configuration: {0}")]
    Load(String),
    /// A key parsed but its value is not acceptable.
    #[error("invalid configuration: key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Overrides from command-line flags, the last layer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    /// `--relay-url`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    /// `--ca-file`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    tunnel: TunnelSettings,
    #[serde(default)]
    servers: BTreeMap<String, RawServer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_proxy: Option<Vec<String>>,
    #[serde(default)]
    relay_spki_sha256: Vec<String>,
    #[serde(default)]
    health: RawHealth,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
enum RawServer {
    Stdio {
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        inherit_env: Vec<String>,
        cwd: Option<PathBuf>,
        #[serde(default)]
        allow_tools: Vec<String>,
        #[serde(default)]
        deny_tools: Vec<String>,
        max_concurrent_calls: Option<usize>,
        #[serde(default, with = "humantime_serde")]
        call_timeout: Option<Duration>,
        max_sessions: Option<usize>,
    },
    Http {
        url: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        allow_tools: Vec<String>,
        #[serde(default)]
        deny_tools: Vec<String>,
        max_concurrent_calls: Option<usize>,
        #[serde(default, with = "humantime_serde")]
        call_timeout: Option<Duration>,
        max_sessions: Option<usize>,
        #[serde(default, with = "humantime_serde")]
        answer_stall_timeout: Option<Duration>,
    },
}

// === impl Config ===

impl Config {
    /// Loads defaults, then `file`, then `OUTPOST_*` variables (nested keys with `__`), then
    /// `overrides` (flags), and resolves references. The agent key comes from `OUTPOST_AGENT_KEY` or `key_file`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment
            .merge(
                Env::prefixed("OUTPOST_")
                    .ignore(&IGNORED_ENV)
                    .split("__")
                    .lowercase(true),
            )
            .merge(Serialized::defaults(overrides));
        let raw: RawConfig = figment.extract().map_err(describe_figment_error)?;
        let key = match std::env::var(KEY_ENV) {
            Ok(key) => SecretString::from(key),
            Err(_) => {
                let path = raw.key_file.as_ref().ok_or_else(|| ConfigError::Invalid {
                    key: "key_file".into(),
                    reason: format!("no agent key: set {KEY_ENV} or key_file"),
                })?;
                read_secret_file(path).map_err(|reason| ConfigError::Invalid {
                    key: "key_file".into(),
                    reason,
                })?
            }
        };
        Self::from_raw(raw, key, &|name| std::env::var(name).ok())
    }

    fn from_raw(
        raw: RawConfig,
        key: SecretString,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let relay_url = raw
            .relay_url
            .ok_or_else(|| invalid("relay_url", "missing"))?;
        let relay_url = url::Url::parse(&relay_url)
            .map_err(|e| invalid("relay_url", &format!("`{relay_url}` is not a URL: {e}")))?;
        if relay_url.scheme() != "wss" {
            return Err(invalid(
                "relay_url",
                "must start with wss://: the tunnel is always TLS",
            ));
        }
        if relay_url.host_str().is_none() {
            return Err(invalid("relay_url", "has no host"));
        }
        if key.expose_secret().trim().is_empty() {
            return Err(invalid("key_file", "the agent key is empty"));
        }
        let t = &raw.tunnel;
        if t.reconnect_min.is_zero() || t.reconnect_max < t.reconnect_min {
            return Err(invalid(
                "tunnel.reconnect_max",
                "reconnect_min must be positive and at most reconnect_max",
            ));
        }
        if t.connect_timeout.is_zero() {
            return Err(invalid(
                "tunnel.connect_timeout",
                "must be longer than zero",
            ));
        }
        if t.max_streams == 0 {
            return Err(invalid("tunnel.max_streams", "must be positive"));
        }
        if raw.servers.is_empty() {
            return Err(invalid("servers", "no server configured"));
        }
        let mut servers = BTreeMap::new();
        for (name, server) in raw.servers {
            if !is_valid_name(&name) {
                return Err(invalid(
                    &format!("servers.{name}"),
                    "names must match [a-z0-9_-]{1,64}",
                ));
            }
            let server = resolve_server(&name, server, env)?;
            servers.insert(name, server);
        }
        let proxy = resolve_proxy(&relay_url, raw.proxy, raw.proxy_password, raw.no_proxy, env)?;
        let relay_pins = raw
            .relay_spki_sha256
            .iter()
            .map(|pin| parse_pin(pin).map_err(|reason| invalid("relay_spki_sha256", &reason)))
            .collect::<Result<Vec<_>, _>>()?;
        let health_listen = raw
            .health
            .listen
            .map(|listen| {
                listen.parse().map_err(|_| {
                    invalid(
                        "health.listen",
                        &format!("`{listen}` is not an address:port such as 127.0.0.1:8081"),
                    )
                })
            })
            .transpose()?;
        Ok(Config {
            relay_url,
            key: SecretString::from(key.expose_secret().trim().to_owned()),
            ca_file: raw.ca_file,
            tunnel: raw.tunnel,
            servers,
            proxy,
            relay_pins,
            health_listen,
        })
    }

    /// Every secret value the agent holds: its key, the proxy password, every header of an
    /// HTTP server, and every child variable whose value came from a `${env:}` or
    /// `${file:}` reference. Outgoing messages are searched for these (see `redact.rs`).
    /// Literal values and `inherit_env` variables are configuration, not secrets.
    pub fn secret_values(&self) -> Vec<(String, &SecretString)> {
        let mut secrets = vec![("the agent key".to_owned(), &self.key)];
        if let Some(password) = self.proxy.as_ref().and_then(|p| p.password.as_ref()) {
            secrets.push(("proxy_password".to_owned(), password));
        }
        for server in self.servers.values() {
            let name = &server.name;
            match &server.transport {
                Transport::Stdio(stdio) => {
                    secrets.extend(
                        stdio
                            .env
                            .iter()
                            .zip(&stdio.env_is_secret)
                            .filter(|(_, secret)| **secret)
                            .map(|((var, value), _)| (format!("servers.{name}.env.{var}"), value)),
                    );
                    secrets.extend(
                        stdio
                            .reference_values
                            .iter()
                            .map(|value| (format!("a reference in servers.{name}.env"), value)),
                    );
                }
                Transport::Http(http) => {
                    secrets.extend(http.headers.iter().map(|(header, value)| {
                        (format!("servers.{name}.headers.{header}"), value)
                    }));
                    secrets.extend(
                        http.reference_values
                            .iter()
                            .map(|value| (format!("a reference in servers.{name}.headers"), value)),
                    );
                }
            }
        }
        secrets
    }
}

fn resolve_server(
    name: &str,
    server: RawServer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServerConfig, ConfigError> {
    let (transport, allow_tools, deny_tools, max_concurrent_calls, call_timeout, max_sessions) =
        match server {
            RawServer::Stdio {
                command,
                args,
                env: vars,
                inherit_env,
                cwd,
                allow_tools,
                deny_tools,
                max_concurrent_calls,
                call_timeout,
                max_sessions,
            } => {
                if command.is_empty() {
                    return Err(invalid(&format!("servers.{name}.command"), "is empty"));
                }
                let mut resolved: Vec<(String, SecretString, bool)> = Vec::new();
                let mut reference_values = Vec::new();
                for var in inherit_env {
                    if let Some(value) = env(&var) {
                        resolved.push((var, SecretString::from(value), false));
                    }
                }
                for (var, value) in vars {
                    let key = format!("servers.{name}.env.{var}");
                    let is_secret = value.replace("$${", "").contains("${");
                    let value = resolve_references(&value, env, &mut reference_values)
                        .map_err(|reason| invalid(&key, &reason))?;
                    resolved.retain(|(existing, _, _)| existing != &var);
                    resolved.push((var, value, is_secret));
                }
                let env_is_secret = resolved.iter().map(|(_, _, secret)| *secret).collect();
                let transport = Transport::Stdio(StdioConfig {
                    command,
                    args,
                    env: resolved.into_iter().map(|(k, v, _)| (k, v)).collect(),
                    env_is_secret,
                    reference_values,
                    cwd,
                });
                (
                    transport,
                    allow_tools,
                    deny_tools,
                    max_concurrent_calls,
                    call_timeout,
                    max_sessions,
                )
            }
            RawServer::Http {
                url,
                headers,
                allow_tools,
                deny_tools,
                max_concurrent_calls,
                call_timeout,
                max_sessions,
                answer_stall_timeout,
            } => {
                let answer_stall_timeout =
                    answer_stall_timeout.unwrap_or(DEFAULT_ANSWER_STALL_TIMEOUT);
                if answer_stall_timeout.is_zero() {
                    return Err(invalid(
                        &format!("servers.{name}.answer_stall_timeout"),
                        "must be longer than zero",
                    ));
                }
                let key = format!("servers.{name}.url");
                let url =
                    url::Url::parse(&url).map_err(|e| invalid(&key, &format!("`{url}`: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid(&key, "must be http:// or https://"));
                }
                let mut resolved = Vec::new();
                let mut reference_values = Vec::new();
                for (header, value) in headers {
                    let key = format!("servers.{name}.headers.{header}");
                    let header_name = http::HeaderName::try_from(header.as_str())
                        .map_err(|e| invalid(&key, &e.to_string()))?;
                    let value = resolve_references(&value, env, &mut reference_values)
                        .map_err(|reason| invalid(&key, &reason))?;
                    if http::HeaderValue::from_str(value.expose_secret()).is_err() {
                        return Err(invalid(&key, "is not a valid header value"));
                    }
                    resolved.push((header_name, value));
                }
                let transport = Transport::Http(HttpConfig {
                    url,
                    headers: resolved,
                    reference_values,
                    answer_stall_timeout,
                });
                (
                    transport,
                    allow_tools,
                    deny_tools,
                    max_concurrent_calls,
                    call_timeout,
                    max_sessions,
                )
            }
        };
    if max_concurrent_calls == Some(0) {
        return Err(invalid(
            &format!("servers.{name}.max_concurrent_calls"),
            "must be positive (leave it out for no limit)",
        ));
    }
    if max_sessions == Some(0) {
        return Err(invalid(
            &format!("servers.{name}.max_sessions"),
            "must be positive (leave it out for the tunnel's max_streams)",
        ));
    }
    if call_timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid(
            &format!("servers.{name}.call_timeout"),
            "must be longer than zero (leave it out for no limit)",
        ));
    }
    let policy = ToolPolicy::new(allow_tools, deny_tools, max_concurrent_calls, call_timeout)
        .map_err(|e| {
            invalid(
                &format!("servers.{name}.allow_tools/deny_tools"),
                &e.to_string(),
            )
        })?
        .with_max_sessions(max_sessions);
    Ok(ServerConfig {
        name: name.to_owned(),
        transport,
        policy,
    })
}

/// The proxy for the relay: the `proxy` key, else `HTTPS_PROXY`/`https_proxy`; none when
/// the relay's host matches `no_proxy` (else `NO_PROXY`/`no_proxy`), or `proxy` is "".
fn resolve_proxy(
    relay_url: &url::Url,
    proxy: Option<String>,
    password: Option<String>,
    no_proxy: Option<Vec<String>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ConfigError> {
    let (value, source) = match proxy {
        Some(value) => (value, "proxy".to_owned()),
        None => match ["HTTPS_PROXY", "https_proxy"]
            .into_iter()
            .find_map(|var| env(var).map(|v| (v, var.to_owned())))
        {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    if value.trim().is_empty() {
        return Ok(None);
    }
    let key = if source == "proxy" {
        "proxy"
    } else {
        source.as_str()
    };
    let no_proxy = match no_proxy {
        Some(list) => list,
        None => ["NO_PROXY", "no_proxy"]
            .into_iter()
            .find_map(env)
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default(),
    };
    let relay_host = relay_url.host_str().unwrap_or_default();
    if no_proxy
        .iter()
        .any(|rule| no_proxy_matches(rule, relay_host))
    {
        return Ok(None);
    }
    // A bare host:port, as HTTPS_PROXY often holds, means an http:// proxy.
    let with_scheme = if value.contains("://") {
        value.clone()
    } else {
        format!("http://{value}")
    };
    let url = url::Url::parse(&with_scheme)
        .map_err(|e| invalid(key, &format!("not a proxy URL: {e}")))?;
    if url.scheme() != "http" {
        return Err(invalid(
            key,
            "only http:// proxies are supported (the tunnel inside CONNECT is TLS 1.3 end to end)",
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| invalid(key, "has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    // Without a port, 3128 (squid's and most proxies' default), not http's 80. The URL
    // parser drops an explicit `:80`, so look for it in the text.
    let authority = with_scheme
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let port = url.port().unwrap_or(if authority.ends_with(":80") {
        80
    } else {
        DEFAULT_PROXY_PORT
    });
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| invalid(key, "user name or password is not UTF-8"))
    };
    let username = match url.username() {
        "" => None,
        user => Some(decode(user)?),
    };
    let mut password_value = match url.password() {
        Some(inline) => Some(SecretString::from(decode(inline)?)),
        None => None,
    };
    if let Some(configured) = password {
        password_value = Some(
            resolve_references(&configured, env, &mut Vec::new())
                .map_err(|reason| invalid("proxy_password", &reason))?,
        );
    }
    if password_value.is_some() && username.is_none() {
        return Err(invalid(
            key,
            "a proxy password needs a user name: http://USER@host:port",
        ));
    }
    Ok(Some(Proxy {
        host,
        port,
        username,
        password: password_value,
        source,
    }))
}

/// Whether a `NO_PROXY` entry covers `host`: `*`, the host itself, a domain suffix
/// (`example.com` or `.example.com` cover `relay.example.com`), an address or a CIDR block.
fn no_proxy_matches(rule: &str, host: &str) -> bool {
    let rule = rule.trim().trim_start_matches("*.").to_ascii_lowercase();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if rule.is_empty() {
        return false;
    }
    if rule == "*" {
        return true;
    }
    if let (Ok(net), Ok(addr)) = (
        rule.parse::<ipnet::IpNet>(),
        host.parse::<std::net::IpAddr>(),
    ) {
        return net.contains(&addr);
    }
    // A rule may carry a port (host:443); the tunnel's port is not compared.
    let rule = match rule.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() && !name.contains(':') => name,
        _ => rule.as_str(),
    };
    let suffix = rule.trim_start_matches('.');
    host == suffix || host.ends_with(&format!(".{suffix}"))
}

/// Parses a pin: base64 of a SHA-256 digest, optionally prefixed `sha256/`.
fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let text = pin.trim().trim_start_matches("sha256/");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("`{pin}` is not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("`{pin}` is not a SHA-256 digest (32 bytes)"))
}

/// Replaces each `${env:NAME}` and `${file:PATH}` in `value`. `$${` is a literal `${`.
fn resolve_references(
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
    references: &mut Vec<SecretString>,
) -> Result<SecretString, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| format!("unterminated reference in `{}`", &rest[start..]))?;
        let reference = &rest[start + 2..start + end];
        let resolved = match reference.split_once(':') {
            Some(("env", name)) => {
                env(name).ok_or_else(|| format!("environment variable {name} is not set"))?
            }
            Some(("file", path)) => read_secret_file(Path::new(path))?
                .expose_secret()
                .to_owned(),
            _ => {
                return Err(format!(
                    "`${{{reference}}}` is neither ${{env:NAME}} nor ${{file:PATH}}"
                ));
            }
        };
        out.push_str(&resolved);
        references.push(SecretString::from(resolved));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(SecretString::from(out))
}

/// Reads a secret from a file, without its trailing newline.
fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map(|s| SecretString::from(s.trim_end_matches(['\n', '\r']).to_owned()))
        .map_err(|_| format!("{} is not UTF-8", path.display()));
    zeroize::Zeroize::zeroize(&mut bytes);
    text
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

fn invalid(key: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Whether a server name is `[a-z0-9_-]{1,64}`, as the relay requires.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

// === defaults ===

impl Default for TunnelSettings {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

/// Environment variable holding the agent key.
pub const KEY_ENV: &str = "OUTPOST_AGENT_KEY";
/// `OUTPOST_*` variables that are not configuration keys.
const IGNORED_ENV: [&str; 6] = [
    "AGENT_KEY",
    "ADMIN_KEY",
    "CONFIG",
    "LOG_FORMAT",
    "PEPPER",
    "WORKER_THREADS",
];
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(500);
const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(30);
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_MAX_STREAMS: usize = 256;
const DEFAULT_PROXY_PORT: u16 = 3128;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ERP_TOKEN" => Some("t0ken".into()),
            "PATH" => Some("/usr/bin".into()),
            _ => None,
        }
    }

    fn raw(toml: &str) -> Result<RawConfig, ConfigError> {
        Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(describe_figment_error)
    }

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_raw(raw(toml)?, SecretString::from("ak_live_x"), &env)
    }

    #[test]
    fn references_resolve_into_secrets_and_children_get_only_named_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db");
        std::fs::write(&file, "s3cret\n").unwrap();
        let config = load(&format!(
            r#"
            relay_url = "wss://relay.example.com"
            [servers.erp]
            type = "stdio"
            command = "erp-mcp"
            env = {{ TOKEN = "${{env:ERP_TOKEN}}", LITERAL = "$${{env:X}}" }}
            inherit_env = ["PATH", "UNSET"]
            [servers.db]
            type = "http"
            url = "http://127.0.0.1:9000/mcp"
            headers = {{ Authorization = "Bearer ${{file:{}}}" }}
            "#,
            file.display()
        ))
        .unwrap();
        let Transport::Stdio(erp) = &config.servers["erp"].transport else {
            panic!()
        };
        let env: Vec<(&str, &str)> = erp
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose_secret()))
            .collect();
        assert_eq!(
            env,
            vec![
                ("PATH", "/usr/bin"),
                ("LITERAL", "${env:X}"),
                ("TOKEN", "t0ken")
            ]
        );
        let Transport::Http(db) = &config.servers["db"].transport else {
            panic!()
        };
        assert_eq!(db.headers[0].1.expose_secret(), "Bearer s3cret");
        assert_eq!(db.answer_stall_timeout, DEFAULT_ANSWER_STALL_TIMEOUT);
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{config:?}").contains("t0ken"));
        assert_eq!(config.secret_values().len(), 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = raw("relay_url = \"wss://x\"\nrelay_ulr = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("relay_ulr"), "{err}");
        let err = load("relay_url = \"ws://x\"\n[servers.a]\ntype=\"stdio\"\ncommand=\"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("relay_url") && err.contains("wss://"), "{err}");
        let err = load("relay_url = \"wss://x\"\n[servers.A]\ntype=\"stdio\"\ncommand=\"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("servers.A"), "{err}");
        let err = load("relay_url = \"wss://x\"\n[servers.a]\ntype=\"stdio\"\ncommand=\"x\"\nenv={T=\"${env:NOPE}\"}")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("servers.a.env.T") && err.contains("NOPE"),
            "{err}"
        );
        let err = load("relay_url = \"wss://x\"\n[servers.a]\ntype=\"ftp\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("servers.a"), "{err}");
        let http =
            "relay_url = \"wss://x\"\n[servers.a]\ntype=\"http\"\nurl=\"http://127.0.0.1:1/mcp\"";
        let err = load(&format!("{http}\nanswer_stall_timeout=\"0s\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("servers.a.answer_stall_timeout"), "{err}");
        let config = load(&format!("{http}\nanswer_stall_timeout=\"2m\"")).unwrap();
        let Transport::Http(a) = &config.servers["a"].transport else {
            panic!()
        };
        assert_eq!(a.answer_stall_timeout, Duration::from_secs(120));
    }
}
