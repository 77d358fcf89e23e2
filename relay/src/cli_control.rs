//! The control-plane commands of `outpost-relay` (`keys`, `agents`, `usage`, `audit`):
//! against the local store (as the organisation's owner, since whoever can read the data
//! directory already holds everything), or with `--remote` against a running relay's
//! admin API, as the key in `OUTPOST_ADMIN_KEY`. Both print the same JSON shapes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use outpost_relay::audit::ChainKey;
use outpost_relay::config::Config;
use outpost_relay::control::{Actor, Control, CreateKey, Role, UsageBy};
use outpost_relay::store::{Scopes, SqliteStore, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

/// Where control-plane commands go.
#[derive(Debug, Args)]
pub(crate) struct Target {
    /// Act on a running relay's admin API (https://HOST:PORT) with the key in
    /// OUTPOST_ADMIN_KEY, instead of the local store.
    #[arg(long, global = true)]
    remote: Option<url::Url>,
    /// CA certificates (PEM) to trust for --remote instead of the system roots.
    #[arg(long, global = true)]
    remote_ca_file: Option<PathBuf>,
    /// Organisation, for the local store (a remote key knows its own).
    #[arg(long, global = true, default_value = "default")]
    org: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Issue a key. The key is printed once and never stored.
    Create {
        /// Issue an agent key bound to this agent name (created if new).
        #[arg(long)]
        agent: Option<String>,
        /// A label for listings.
        #[arg(long)]
        name: Option<String>,
        /// Role of a client key.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// AGENT/SERVER glob the key may reach (repeat); every server by default.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Tool-name glob the key may call (repeat); every tool by default.
        #[arg(long = "tool")]
        tools: Vec<String>,
        /// Rate plan: small (10/s), medium (100/s), large (1,000/s).
        #[arg(long)]
        plan: Option<String>,
        /// Own rate, requests per second.
        #[arg(long)]
        rate: Option<u32>,
        /// Own burst.
        #[arg(long)]
        burst: Option<u32>,
        /// Lifetime, e.g. 90d.
        #[arg(long)]
        expires_in: Option<humantime::Duration>,
        /// Print only the key (for scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// List keys (never the secrets).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id; refused from the next request on.
    Revoke {
        /// Key id (kid_...).
        key_id: String,
    },
    /// Replace a key: the new one is printed once; the old one keeps working for the
    /// overlap, then expires.
    Rotate {
        /// Key id (kid_...).
        key_id: String,
        /// How long the old key keeps working.
        #[arg(long, default_value = "24h")]
        overlap: humantime::Duration,
        /// Print only the new key.
        #[arg(long)]
        quiet: bool,
    },
    /// Change the role of a member's key.
    Role {
        /// Key id (kid_...).
        key_id: String,
        /// The new role.
        #[arg(value_enum)]
        role: RoleArg,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Walk the hash chain; exit 1 and name the first broken row if it was altered.
    Verify,
    /// Write the organisation's audit events as JSON lines.
    Export {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum RoleArg {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Owner => Role::Owner,
            RoleArg::Admin => Role::Admin,
            RoleArg::Member => Role::Member,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ByArg {
    Tool,
    Key,
    Agent,
    Server,
}

impl Target {
    /// Whether commands go to a remote relay.
    pub(crate) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// The organisation named for the local store.
    pub(crate) fn org(&self) -> &str {
        &self.org
    }
}

/// A local store or a remote admin API.
enum Backend {
    Local {
        store: SqliteStore,
        config: Box<Config>,
        actor: Actor,
    },
    Remote {
        client: reqwest::Client,
        base: url::Url,
        key: SecretString,
    },
}

impl Backend {
    async fn open(target: &Target, config: Option<Config>) -> anyhow::Result<Self> {
        if let Some(base) = &target.remote {
            let key = std::env::var("OUTPOST_ADMIN_KEY")
                .map(SecretString::from)
                .context("--remote needs a client key in OUTPOST_ADMIN_KEY")?;
            let mut roots = rustls::RootCertStore::empty();
            match &target.remote_ca_file {
                Some(path) => {
                    use rustls_pki_types::pem::PemObject;
                    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
                        .with_context(|| format!("reading {}", path.display()))?
                    {
                        roots.add(cert?)?;
                    }
                }
                None => {
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                }
            }
            let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .user_agent(concat!("outpost-relay-cli/", env!("CARGO_PKG_VERSION")))
                .build()?;
            return Ok(Backend::Remote {
                client,
                base: base.clone(),
                key,
            });
        }
        let config = config.context("no configuration")?;
        let store = SqliteStore::open(&config.database_path()).await?;
        let org = store
            .organisation_by_name(&target.org)
            .await?
            .with_context(|| {
                format!(
                    "no organisation {:?}: run `outpost-relay init --org {}` first",
                    target.org, target.org
                )
            })?;
        let actor = Actor {
            id: "cli".into(),
            org_id: org.id,
            role: Role::Owner,
            scopes: Scopes::default(),
            source: None,
            user_agent: Some("outpost-relay-cli".into()),
            correlation_id: None,
        };
        Ok(Backend::Local {
            store,
            config: Box::new(config),
            actor,
        })
    }

    /// One admin API call; the local store answers the same request in [`Backend::local`].
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        match self {
            Backend::Remote { client, base, key } => {
                let url = base.join(path)?;
                let mut request = client.request(method, url).bearer_auth(key.expose_secret());
                if let Some(body) = body {
                    request = request.json(&body);
                }
                let response = request.send().await?;
                let status = response.status();
                let value: Value = response.json().await.unwrap_or(Value::Null);
                if !status.is_success() {
                    bail!(
                        "HTTP {}: {} (correlation id {})",
                        status.as_u16(),
                        value["message"].as_str().unwrap_or("no detail"),
                        value["correlation_id"].as_str().unwrap_or("-")
                    );
                }
                Ok(value)
            }
            Backend::Local {
                store,
                config,
                actor,
            } => {
                let pepper = config.pepper()?;
                let chain = ChainKey::derive(&pepper);
                let control = Control {
                    store,
                    pepper: &pepper,
                    chain: &chain,
                    environment: config.environment,
                };
                local(&control, actor, method, path, body).await
            }
        }
    }

    async fn close(self) {
        if let Backend::Local { store, .. } = self {
            store.close().await;
        }
    }
}

/// The local store's answer to an admin API request.
async fn local(
    control: &Control<'_>,
    actor: &Actor,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let segments: Vec<&str> = path
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches("/admin/v1/")
        .split('/')
        .collect();
    let query: std::collections::HashMap<String, String> = path
        .split_once('?')
        .map(|(_, q)| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    Ok(match (method, segments.as_slice()) {
        (reqwest::Method::GET, ["keys"]) => json!({ "keys": control.list_keys(actor).await? }),
        (reqwest::Method::POST, ["keys"]) => {
            let create: CreateKey = serde_json::from_value(body.unwrap_or(json!({})))?;
            let created = control.create_key(actor, create).await?;
            json!({ "key": created.key, "secret": created.secret.expose_secret() })
        }
        (reqwest::Method::POST, ["keys", id, "revoke"]) => {
            serde_json::to_value(control.revoke_key(actor, id).await?)?
        }
        (reqwest::Method::POST, ["keys", id, "rotate"]) => {
            let overlap = body
                .as_ref()
                .and_then(|b| b["overlap_seconds"].as_u64())
                .unwrap_or(24 * 3600);
            let created = control.rotate_key(actor, id, overlap).await?;
            json!({ "key": created.key, "secret": created.secret.expose_secret() })
        }
        (reqwest::Method::PATCH, ["keys", id]) => {
            let role: Role = serde_json::from_value(body.unwrap_or(json!({}))["role"].clone())?;
            serde_json::to_value(control.change_role(actor, id, role).await?)?
        }
        (reqwest::Method::GET, ["agents"]) => {
            let agents = control.store.agents(&actor.org_id).await?;
            json!({ "agents": agents.iter().map(|a| json!({"id": a.id, "name": a.name})).collect::<Vec<_>>() })
        }
        (reqwest::Method::GET, ["usage"]) => {
            let since =
                outpost_relay::admin::parse_since(query.get("since").map_or("24h", String::as_str))
                    .map_err(|e| anyhow::anyhow!(e.0))?;
            let by: UsageBy =
                serde_json::from_value(json!(query.get("by").map_or("tool", String::as_str)))?;
            json!({ "since": since, "by": by, "rows": control.usage(actor, since, by).await? })
        }
        (reqwest::Method::GET, ["audit"]) => {
            let after = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(1000);
            json!({ "events": control.audit_rows(actor, after, limit).await? })
        }
        (reqwest::Method::GET, ["audit", "verify"]) => {
            let result = control.verify_audit(actor).await?;
            json!({ "rows": result.rows, "intact": result.problem.is_none(), "problem": result.problem })
        }
        (method, _) => bail!("no local form of {method} {path}"),
    })
}

/// `outpost-relay keys ...`
pub(crate) async fn keys(
    target: &Target,
    config: Option<Config>,
    command: KeysCommand,
) -> anyhow::Result<()> {
    let backend = Backend::open(target, config).await?;
    let result = run_keys(&backend, command).await;
    backend.close().await;
    result
}

async fn run_keys(backend: &Backend, command: KeysCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        KeysCommand::Create {
            agent,
            name,
            role,
            scopes,
            tools,
            plan,
            rate,
            burst,
            expires_in,
            quiet,
        } => {
            let request = CreateKey {
                name,
                agent,
                role: role.map(Role::from),
                scopes: (!scopes.is_empty()).then_some(scopes),
                tools: (!tools.is_empty()).then_some(tools),
                plan,
                rate_per_second: rate,
                burst,
                expires_in_seconds: expires_in.map(|d| d.as_secs()),
            };
            let created = backend
                .call(
                    reqwest::Method::POST,
                    "/admin/v1/keys",
                    Some(serde_json::to_value(request)?),
                )
                .await?;
            print_secret(&mut out, &created, quiet)?;
        }
        KeysCommand::List { json } => {
            let keys = backend
                .call(reqwest::Method::GET, "/admin/v1/keys", None)
                .await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&keys)?)?;
            } else {
                writeln!(
                    out,
                    "{:<22} {:<6} {:<7} {:<9} {:<17} {:<17} {:<20} NAME",
                    "ID", "KIND", "ROLE", "STATE", "LAST USED", "EXPIRES", "SCOPES"
                )?;
                for key in keys["keys"].as_array().into_iter().flatten() {
                    let scopes = key["scopes"]
                        .as_array()
                        .map(|s| {
                            s.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "{:<22} {:<6} {:<7} {:<9} {:<17} {:<17} {:<20} {}",
                        key["id"].as_str().unwrap_or(""),
                        key["kind"].as_str().unwrap_or(""),
                        key["role"].as_str().unwrap_or(""),
                        key["state"].as_str().unwrap_or(""),
                        time(&key["last_used_at"]),
                        time(&key["expires_at"]),
                        scopes,
                        key["name"].as_str().unwrap_or(""),
                    )?;
                }
            }
        }
        KeysCommand::Revoke { key_id } => {
            backend
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/v1/keys/{key_id}/revoke"),
                    None,
                )
                .await?;
            writeln!(out, "revoked {key_id}")?;
        }
        KeysCommand::Rotate {
            key_id,
            overlap,
            quiet,
        } => {
            let created = backend
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/v1/keys/{key_id}/rotate"),
                    Some(json!({ "overlap_seconds": overlap.as_secs() })),
                )
                .await?;
            if !quiet {
                writeln!(out, "{key_id} keeps working for {overlap}, then expires")?;
            }
            print_secret(&mut out, &created, quiet)?;
        }
        KeysCommand::Role { key_id, role } => {
            let role = Role::from(role);
            backend
                .call(
                    reqwest::Method::PATCH,
                    &format!("/admin/v1/keys/{key_id}"),
                    Some(json!({ "role": role })),
                )
                .await?;
            writeln!(out, "{key_id} is now {}", role.as_str())?;
        }
    }
    Ok(())
}

fn print_secret(out: &mut impl Write, created: &Value, quiet: bool) -> anyhow::Result<()> {
    let secret = created["secret"].as_str().context("no key in the answer")?;
    if quiet {
        writeln!(out, "{secret}")?;
    } else {
        writeln!(
            out,
            "{} key {} (shown once, store it now):",
            created["key"]["kind"].as_str().unwrap_or(""),
            created["key"]["id"].as_str().unwrap_or("")
        )?;
        writeln!(out, "{secret}")?;
    }
    Ok(())
}

fn time(value: &Value) -> String {
    match value.as_i64() {
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        )
        .to_string()
        .chars()
        .take(16)
        .collect(),
        None => "-".into(),
    }
}

/// `outpost-relay agents`
pub(crate) async fn agents(target: &Target, config: Option<Config>) -> anyhow::Result<()> {
    let backend = Backend::open(target, config).await?;
    let result = backend
        .call(reqwest::Method::GET, "/admin/v1/agents", None)
        .await;
    backend.close().await;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

/// `outpost-relay usage --since 24h --by tool`
pub(crate) async fn usage(
    target: &Target,
    config: Option<Config>,
    since: &str,
    by: ByArg,
    json_out: bool,
) -> anyhow::Result<()> {
    let by = match by {
        ByArg::Tool => "tool",
        ByArg::Key => "key",
        ByArg::Agent => "agent",
        ByArg::Server => "server",
    };
    let backend = Backend::open(target, config).await?;
    let result = backend
        .call(
            reqwest::Method::GET,
            &format!("/admin/v1/usage?since={since}&by={by}"),
            None,
        )
        .await;
    backend.close().await;
    let usage = result?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&usage)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32} {:>8} {:>7} {:>9} {:>9} {:>9} {:>12} {:>12}",
        by.to_uppercase(),
        "CALLS",
        "ERRORS",
        "P50 ms",
        "P90 ms",
        "P99 ms",
        "BYTES IN",
        "BYTES OUT"
    )?;
    for row in usage["rows"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<32} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>12}",
            row["group"].as_str().unwrap_or(""),
            row["calls"],
            row["errors"],
            row["p50_ms"].as_f64().unwrap_or(0.0),
            row["p90_ms"].as_f64().unwrap_or(0.0),
            row["p99_ms"].as_f64().unwrap_or(0.0),
            row["bytes_in"],
            row["bytes_out"],
        )?;
    }
    Ok(())
}

/// `outpost-relay audit verify|export`
pub(crate) async fn audit(
    target: &Target,
    config: Option<Config>,
    command: AuditCommand,
) -> anyhow::Result<()> {
    let backend = Backend::open(target, config).await?;
    let result = run_audit(&backend, command).await;
    backend.close().await;
    result
}

async fn run_audit(backend: &Backend, command: AuditCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        AuditCommand::Verify => {
            let result = backend
                .call(reqwest::Method::GET, "/admin/v1/audit/verify", None)
                .await?;
            match result["problem"].as_str() {
                None => writeln!(out, "audit chain intact: {} rows verified", result["rows"])?,
                Some(problem) => bail!(
                    "audit chain broken after {} good rows: {problem}",
                    result["rows"]
                ),
            }
        }
        AuditCommand::Export { after } => {
            let mut cursor = after;
            loop {
                let page = backend
                    .call(
                        reqwest::Method::GET,
                        &format!("/admin/v1/audit?after={cursor}&limit=1000"),
                        None,
                    )
                    .await?;
                let events = page["events"].as_array().cloned().unwrap_or_default();
                let Some(last) = events.last().and_then(|e| e["seq"].as_i64()) else {
                    break;
                };
                for event in &events {
                    writeln!(out, "{event}")?;
                }
                cursor = last;
            }
        }
    }
    Ok(())
}
