//! The `outpost-relay` binary: parses flags, sets up logging, loads configuration (exit
//! code 64 when it is invalid, before any port is bound), and runs a subcommand.

mod healthcheck;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use outpost_relay::auth::{self, KeyKind};
use outpost_relay::config::{Config, Overrides};
use outpost_relay::store::{NewKey, SqliteStore, Store};
use outpost_relay::{Relay, is_valid_name};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// Outpost relay: lets AI clients call MCP servers that stay inside a private network.
///
/// Agents dial out to the relay over one TLS 1.3 WebSocket; clients call
/// https://RELAY/mcp/AGENT/SERVER with `Authorization: Bearer pk_...`.
#[derive(Debug, Parser)]
#[command(name = "outpost-relay", version, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Keys may also come from OUTPOST_* variables, e.g.
    /// OUTPOST_LISTEN or OUTPOST_TLS__CERT_FILE.
    #[arg(long, short, global = true, env = "OUTPOST_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory holding the SQLite store and the pepper (overrides `data_dir`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "OUTPOST_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve agent tunnels and MCP clients.
    Serve {
        /// Listen address (overrides `listen`), e.g. 0.0.0.0:443.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Create the store, a pepper (unless OUTPOST_PEPPER is set), an organisation and
    /// its first owner key, printed once.
    Init {
        /// Name of the first organisation.
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Exit 0 if this relay's /livez answers over its own TLS listener (for container
    /// health checks; trusts exactly the configured certificate).
    Healthcheck,
    /// Write a development CA and a certificate for the given names. For local use only:
    /// production relays use a certificate from a real CA.
    DevCerts {
        /// Directory to write ca.pem, cert.pem and key.pem to.
        #[arg(long)]
        out: PathBuf,
        /// DNS names and IP addresses the certificate is for.
        #[arg(long = "name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Issue a key. The key is printed once and never stored.
    Create {
        /// Organisation name.
        #[arg(long, default_value = "default")]
        org: String,
        /// Issue an agent key bound to this agent name (created if new), instead of a
        /// client key.
        #[arg(long)]
        agent: Option<String>,
        /// A label for listings.
        #[arg(long)]
        name: Option<String>,
        /// Role of a client key.
        #[arg(long, value_enum, default_value_t = Role::Member)]
        role: Role,
        /// Print only the key (for scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// List an organisation's keys (never the secrets).
    List {
        /// Organisation name.
        #[arg(long, default_value = "default")]
        org: String,
    },
    /// Revoke a key by id; refused from the next request on.
    Revoke {
        /// Organisation name.
        #[arg(long, default_value = "default")]
        org: String,
        /// Key id (kid_...).
        key_id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    outpost_tunnel::runtime::init_logging(matches!(cli.log_format, LogFormat::Json));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let invalid_config = err.chain().any(|cause| {
                cause
                    .downcast_ref::<outpost_relay::config::ConfigError>()
                    .is_some()
            });
            if invalid_config {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        ..Overrides::default()
    };
    match cli.command {
        Command::Serve { listen } => {
            overrides.listen = listen;
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            let relay = Relay::bind(config).await?;
            let shutdown = CancellationToken::new();
            // Signals are caught from before the relay says it listens.
            let signals = tokio::spawn(outpost_tunnel::runtime::cancel_on_signal(
                shutdown.clone(),
                "shutting down",
            ));
            println!("outpost-relay listening on {}", relay.local_addr());
            relay.run(shutdown).await;
            signals.abort();
            Ok(())
        }
        Command::Init { org } => {
            let config = Config::load_store_only(cli.config.as_deref(), &overrides)?;
            init(&config, &org).await
        }
        Command::Keys(command) => {
            let config = Config::load_store_only(cli.config.as_deref(), &overrides)?;
            keys(&config, command).await
        }
        Command::DevCerts { out, names } => dev_certs(&out, &names),
        Command::Healthcheck => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            healthcheck::run(&config).await
        }
    }
}

async fn init(config: &Config, org: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    restrict_dir(&config.data_dir)?;
    if std::env::var(outpost_relay::config::PEPPER_ENV).is_err() && !config.pepper_file.exists() {
        write_secret_file(
            &config.pepper_file,
            auth::Pepper::generate_hex().expose_secret(),
        )?;
        println!("wrote a new pepper to {}", config.pepper_file.display());
    }
    let pepper = config.pepper()?;
    let store = SqliteStore::open(&config.database_path()).await?;
    let organisation = match store.organisation_by_name(org).await? {
        Some(_) => bail!("organisation {org:?} already exists: use `outpost-relay keys create`"),
        None => store.create_organisation(org).await?,
    };
    let key = auth::generate(KeyKind::Client, config.environment, &pepper);
    store
        .insert_key(NewKey {
            id: key.key_id.0.clone(),
            org_id: organisation.id.clone(),
            kind: KeyKind::Client.as_str(),
            environment: config.environment.as_str(),
            name: "first owner key".into(),
            role: "owner".into(),
            agent_id: None,
            hash: key.hash,
            expires_at: None,
        })
        .await?;
    store.close().await;
    println!(
        "created organisation {org:?} ({}) in {}",
        organisation.id,
        config.database_path().display()
    );
    println!("owner key {} (shown once, store it now):", key.key_id);
    println!("{}", key.secret.expose_secret());
    Ok(())
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = SqliteStore::open(&config.database_path()).await?;
    let find_org = |name: String| {
        let store = store.clone();
        async move {
            store.organisation_by_name(&name).await?.with_context(|| {
                format!("no organisation {name:?}: run `outpost-relay init --org {name}` first")
            })
        }
    };
    match command {
        KeysCommand::Create {
            org,
            agent,
            name,
            role,
            quiet,
        } => {
            let pepper = config.pepper()?;
            let organisation = find_org(org).await?;
            let (kind, agent_id, role, label) = match &agent {
                Some(agent) => {
                    if !is_valid_name(agent) {
                        bail!("agent name {agent:?} must match [a-z0-9_-]{{1,64}}");
                    }
                    let record = store.ensure_agent(&organisation.id, agent).await?;
                    (
                        KeyKind::Agent,
                        Some(record.id),
                        "agent".to_owned(),
                        format!("agent {agent}"),
                    )
                }
                None => (
                    KeyKind::Client,
                    None,
                    role_name(role).to_owned(),
                    "client key".to_owned(),
                ),
            };
            let key = auth::generate(kind, config.environment, &pepper);
            store
                .insert_key(NewKey {
                    id: key.key_id.0.clone(),
                    org_id: organisation.id,
                    kind: kind.as_str(),
                    environment: config.environment.as_str(),
                    name: name.unwrap_or(label),
                    role,
                    agent_id,
                    hash: key.hash,
                    expires_at: None,
                })
                .await?;
            if quiet {
                println!("{}", key.secret.expose_secret());
            } else {
                println!(
                    "{} key {} (shown once, store it now):",
                    kind.as_str(),
                    key.key_id
                );
                println!("{}", key.secret.expose_secret());
            }
        }
        KeysCommand::List { org } => {
            let organisation = find_org(org).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<22} {:<7} {:<7} {:<8} {:<8} NAME",
                "ID", "KIND", "ENV", "ROLE", "STATE"
            )?;
            for key in store.keys(&organisation.id).await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                writeln!(
                    out,
                    "{:<22} {:<7} {:<7} {:<8} {:<8} {}",
                    key.id, key.kind, key.environment, key.role, state, key.name
                )?;
            }
        }
        KeysCommand::Revoke { org, key_id } => {
            let organisation = find_org(org).await?;
            store
                .revoke_key(&organisation.id, &key_id, auth::now_ms())
                .await?;
            println!("revoked {key_id}");
        }
    }
    store.close().await;
    Ok(())
}

fn dev_certs(out: &Path, names: &[String]) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for name in ["ca.pem", "cert.pem", "key.pem"] {
        if out.join(name).exists() {
            bail!(
                "{} exists already; remove it or choose another --out",
                out.join(name).display()
            );
        }
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Outpost development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("localhost"),
    );
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
    std::fs::write(out.join("ca.pem"), ca.pem())?;
    std::fs::write(out.join("cert.pem"), leaf.pem())?;
    write_secret_file(&out.join("key.pem"), &leaf_key.serialize_pem())?;
    println!(
        "wrote {}/ca.pem, cert.pem and key.pem for {}",
        out.display(),
        names.join(", ")
    );
    Ok(())
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
        Role::Viewer => "viewer",
    }
}

/// Writes a file readable only by its owner.
fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}

fn restrict_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", path.display()))
}

/// Exit code for an invalid configuration (sysexits' EX_USAGE), before anything is bound.
const EX_CONFIG: u8 = 64;
