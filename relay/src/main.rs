//! The `outpost-relay` binary: parses flags, sets up logging, loads configuration (exit
//! code 64 when it is invalid, before any port is bound), and runs a subcommand.

mod cli_control;
mod healthcheck;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use outpost_relay::Relay;
use outpost_relay::auth::{self, KeyKind};
use outpost_relay::config::{Config, Overrides};
use outpost_relay::store::{NewKey, SqliteStore, Store};
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
    /// Worker threads of the async runtime; default: one per CPU this process may use. One
    /// spends less CPU per call where other busy processes share the cores.
    #[arg(long, global = true, env = outpost_tunnel::runtime::WORKER_THREADS_ENV)]
    worker_threads: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    target: cli_control::Target,
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
    /// Create the store, a pepper (unless OUTPOST_PEPPER is set), an organisation (named
    /// by --org) and its first owner key, printed once.
    Init,
    /// Manage API keys: create, list, revoke, rotate, change a member's role.
    #[command(subcommand)]
    Keys(cli_control::KeysCommand),
    /// List the organisation's agents.
    Agents,
    /// Usage over a period, grouped.
    Usage {
        /// How far back, e.g. 24h, 7d.
        #[arg(long, default_value = "24h")]
        since: String,
        /// Group by.
        #[arg(long, value_enum, default_value_t = cli_control::ByArg::Tool)]
        by: cli_control::ByArg,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify or export the audit trail.
    #[command(subcommand)]
    Audit(cli_control::AuditCommand),
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
    let runtime = match outpost_tunnel::runtime::build(cli.worker_threads) {
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
        Command::Init => {
            let config = Config::load_store_only(cli.config.as_deref(), &overrides)?;
            init(&config, &cli.target_org()).await
        }
        Command::Keys(command) => {
            let config = local_config(&cli.target, cli.config.as_deref(), &overrides)?;
            cli_control::keys(&cli.target, config, command).await
        }
        Command::Agents => {
            let config = local_config(&cli.target, cli.config.as_deref(), &overrides)?;
            cli_control::agents(&cli.target, config).await
        }
        Command::Usage {
            ref since,
            by,
            json,
        } => {
            let config = local_config(&cli.target, cli.config.as_deref(), &overrides)?;
            cli_control::usage(&cli.target, config, since, by, json).await
        }
        Command::Audit(command) => {
            let config = local_config(&cli.target, cli.config.as_deref(), &overrides)?;
            cli_control::audit(&cli.target, config, command).await
        }
        Command::DevCerts { out, names } => dev_certs(&out, &names),
        Command::Healthcheck => {
            let config = Config::load(cli.config.as_deref(), &overrides)?;
            healthcheck::run(&config).await
        }
    }
}

/// The store's configuration, unless the command goes to a remote relay.
fn local_config(
    target: &cli_control::Target,
    file: Option<&Path>,
    overrides: &Overrides,
) -> anyhow::Result<Option<Config>> {
    if target.is_remote() {
        return Ok(None);
    }
    Ok(Some(Config::load_store_only(file, overrides)?))
}

impl Cli {
    fn target_org(&self) -> String {
        self.target.org().to_owned()
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
            scopes: outpost_relay::store::Scopes::default(),
            rate_per_second: None,
            burst: None,
            created_by: "cli".into(),
        })
        .await?;
    let chain = outpost_relay::audit::ChainKey::derive(&pepper);
    let event = |action: &'static str, resource: &str| outpost_relay::audit::AuditEvent {
        org_id: Some(organisation.id.clone()),
        actor: "cli".into(),
        action,
        resource: resource.to_owned(),
        user_agent: Some("outpost-relay-cli".into()),
        detail: serde_json::json!({}),
        ..outpost_relay::audit::AuditEvent::default()
    };
    outpost_relay::audit::append(
        &store,
        &chain,
        &[
            event("organisation.created", &organisation.id),
            event("key.created", &key.key_id.0),
        ],
    )
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
    // Strict verifiers (OpenSSL's x509_strict, Python 3.13+) require the issuer's key id.
    leaf_params.use_authority_key_identifier_extension = true;
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
