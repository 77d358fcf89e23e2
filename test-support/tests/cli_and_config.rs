//! The binaries' command lines: an invalid configuration exits with code 64 before any
//! port is bound and names the offending key; layers override in the documented order
//! (defaults < file < OUTPOST_* env < flags); keys are printed once and never listed.

use outpost_test_support::{Certs, Process, binary};

fn relay_config(dir: &std::path::Path, certs: &Certs, extra: &str) -> std::path::PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\n{extra}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            dir.join("data"),
            certs.cert,
            certs.key
        ),
    )
    .unwrap();
    path
}

async fn relay_init(dir: &std::path::Path) -> anyhow::Result<String> {
    let data = dir.join("data");
    let mut init = Process::spawn(
        &binary("outpost-relay"),
        &["--data-dir", data.to_str().unwrap(), "init"],
        &[],
    )?;
    anyhow::ensure!(
        init.wait().await? == Some(0),
        "init failed: {}",
        init.output()
    );
    Ok(init.output())
}

#[tokio::test]
async fn invalid_relay_configuration_exits_64_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate()?;
    relay_init(dir.path()).await?;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("listen = \"127.0.0.1:0\"\nlisen = 1", vec![], "lisen"),
        ("listen = \"not an address\"", vec![], "listen"),
        (
            "listen = \"127.0.0.1:0\"\nenvironment = \"prod\"",
            vec![],
            "environment",
        ),
        (
            "listen = \"127.0.0.1:0\"",
            vec![("OUTPOST_LIMITS__MAX_BODY_BYTES", "lots")],
            "limits.max_body_bytes",
        ),
        (
            "listen = \"127.0.0.1:0\"",
            vec![("OUTPOST_TUNNEL__HEARTBEAT_INTERVAL", "1ms")],
            "tunnel.heartbeat_interval",
        ),
        (
            "listen = \"127.0.0.1:0\"",
            vec![("OUTPOST_LISTN", "127.0.0.1:1")],
            "listn",
        ),
    ];
    for (toml, env, key) in cases {
        let config = relay_config(dir.path(), &certs, toml);
        let mut relay = Process::spawn(
            &binary("outpost-relay"),
            &["--config", config.to_str().unwrap(), "serve"],
            &env,
        )?;
        let code = relay.wait().await?;
        let output = relay.output();
        assert_eq!(code, Some(64), "{toml} {env:?}: {output}");
        assert!(output.contains(key), "{key} not named in: {output}");
        assert!(!output.contains("listening"), "nothing was bound: {output}");
    }
    Ok(())
}

#[tokio::test]
async fn flags_override_env_which_overrides_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate()?;
    relay_init(dir.path()).await?;
    let config = relay_config(dir.path(), &certs, "listen = \"file-says-bogus\"");
    let config = config.to_str().unwrap();
    // The environment fixes the file's bad value.
    let mut relay = Process::spawn(
        &binary("outpost-relay"),
        &["--config", config, "serve"],
        &[("OUTPOST_LISTEN", "127.0.0.1:0")],
    )?;
    relay.wait_for("listening on 127.0.0.1:").await?;
    assert_eq!(relay.terminate().await?, Some(0));
    // A flag fixes the environment's bad value.
    let mut relay = Process::spawn(
        &binary("outpost-relay"),
        &["--config", config, "serve", "--listen", "127.0.0.1:0"],
        &[("OUTPOST_LISTEN", "env-says-bogus")],
    )?;
    relay.wait_for("listening on 127.0.0.1:").await?;
    assert_eq!(relay.terminate().await?, Some(0));
    Ok(())
}

/// The runtime's worker threads come from `--worker-threads`, else
/// `OUTPOST_WORKER_THREADS` (not a configuration key, so no configuration error), else one
/// per CPU; the relay says how many it runs. Zero is a usage error.
#[tokio::test]
async fn worker_threads_come_from_the_flag_or_the_environment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = Certs::generate()?;
    relay_init(dir.path()).await?;
    let config = relay_config(dir.path(), &certs, "listen = \"127.0.0.1:0\"");
    let config = config.to_str().unwrap();
    let cpus = std::thread::available_parallelism()?.get();
    // A number no default gives, and one the environment does not.
    let (more, cpus) = ((cpus + 1).to_string(), cpus.to_string());
    // Flags, environment, the worker threads the relay says it runs. tokio's own variable
    // has no say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 3] = [
        (&[], &[("TOKIO_WORKER_THREADS", &more)], &cpus),
        (&[], &[("OUTPOST_WORKER_THREADS", &more)], &more),
        (
            &["--worker-threads", "1"],
            &[("OUTPOST_WORKER_THREADS", &more)],
            "1",
        ),
    ];
    for (flags, env, workers) in cases {
        let mut args = vec!["--config", config, "serve"];
        args.extend(flags);
        let mut relay = Process::spawn(&binary("outpost-relay"), &args, env)?;
        let line = relay.wait_for("worker_threads=").await?;
        let said = line
            .split("worker_threads=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next());
        assert_eq!(said, Some(workers), "{flags:?} {env:?}: {line}");
        assert_eq!(relay.terminate().await?, Some(0));
    }
    for (binary_name, command) in [("outpost-relay", "serve"), ("outpost-agent", "check")] {
        let mut process = Process::spawn(
            &binary(binary_name),
            &[command],
            &[("OUTPOST_WORKER_THREADS", "0")],
        )?;
        assert_eq!(process.wait().await?, Some(2), "{}", process.output());
        assert!(
            process.output().contains("'0' for '--worker-threads"),
            "{}",
            process.output()
        );
    }
    Ok(())
}

#[tokio::test]
async fn invalid_agent_configuration_exits_64_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("agent.key");
    std::fs::write(&key_file, format!("ak_live_{}\n", "a".repeat(32)))?;
    let base = format!("key_file = {key_file:?}\n");
    let server = "[servers.erp]\ntype = \"stdio\"\ncommand = \"erp\"\n";
    let cases = vec![
        (
            format!("relay_url = \"wss://r\"\n{base}{server}surprise = 1\n"),
            vec![],
            "surprise",
        ),
        (
            format!("relay_url = \"ws://r\"\n{base}{server}"),
            vec![],
            "relay_url",
        ),
        (
            format!("relay_url = \"wss://r\"\n{server}"),
            vec![],
            "OUTPOST_AGENT_KEY",
        ),
        (
            format!("relay_url = \"wss://r\"\n{base}"),
            vec![],
            "servers",
        ),
        (
            format!(
                "relay_url = \"wss://r\"\n{base}[servers.Bad]\ntype = \"stdio\"\ncommand = \"x\"\n"
            ),
            vec![],
            "servers.Bad",
        ),
        (
            format!(
                "relay_url = \"wss://r\"\n{base}[servers.erp]\ntype = \"stdio\"\ncommand = \"x\"\nenv = {{ T = \"${{env:OUTPOST_TEST_UNSET_VARIABLE}}\" }}\n"
            ),
            vec![],
            "servers.erp.env.T",
        ),
        (
            format!("relay_url = \"wss://r\"\n{base}{server}"),
            vec![("OUTPOST_TUNNEL__MAX_STREAMS", "0")],
            "tunnel.max_streams",
        ),
    ];
    for (toml, env, key) in cases {
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, &toml)?;
        let mut agent = Process::spawn(
            &binary("outpost-agent"),
            &["--config", config.to_str().unwrap(), "check"],
            &env,
        )?;
        let code = agent.wait().await?;
        let output = agent.output();
        assert_eq!(code, Some(64), "{toml}: {output}");
        assert!(output.contains(key), "{key} not named in: {output}");
    }
    // And a valid one passes `check`.
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!("relay_url = \"wss://relay.example.com\"\n{base}{server}"),
    )?;
    // Also with a variable of the binary's own that is not a configuration key.
    for env in [&[][..], &[("OUTPOST_WORKER_THREADS", "1")][..]] {
        let mut agent = Process::spawn(
            &binary("outpost-agent"),
            &[
                "--config",
                config.to_str().unwrap(),
                "check",
                "--config-only",
            ],
            env,
        )?;
        assert_eq!(agent.wait().await?, Some(0), "{env:?}: {}", agent.output());
    }
    Ok(())
}

#[tokio::test]
async fn keys_are_printed_once_and_never_listed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let init = relay_init(dir.path()).await?;
    let owner_key = init.lines().last().unwrap().trim().to_owned();
    assert!(
        owner_key.starts_with("pk_live_") && owner_key.len() == 40,
        "{init}"
    );
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let relay = binary("outpost-relay");

    let mut create = Process::spawn(
        &relay,
        &["--data-dir", data, "keys", "create", "--agent", "prod-eu"],
        &[],
    )?;
    assert_eq!(create.wait().await?, Some(0));
    let created = create.output();
    let agent_key = created.lines().last().unwrap().trim().to_owned();
    assert!(agent_key.starts_with("ak_live_"), "{created}");
    let key_id = created
        .split_whitespace()
        .find(|w| w.starts_with("kid_"))
        .unwrap()
        .to_owned();

    let mut list = Process::spawn(&relay, &["--data-dir", data, "keys", "list"], &[])?;
    assert_eq!(list.wait().await?, Some(0));
    let listing = list.output();
    assert!(
        listing.contains(&key_id) && listing.contains("owner") && listing.contains("agent"),
        "{listing}"
    );
    assert!(
        !listing.contains(&owner_key[8..]) && !listing.contains(&agent_key[8..]),
        "secrets listed: {listing}"
    );

    let mut revoke = Process::spawn(
        &relay,
        &["--data-dir", data, "keys", "revoke", &key_id],
        &[],
    )?;
    assert_eq!(revoke.wait().await?, Some(0));
    let mut list = Process::spawn(&relay, &["--data-dir", data, "keys", "list"], &[])?;
    list.wait().await?;
    assert!(
        list.output()
            .lines()
            .any(|l| l.contains(&key_id) && l.contains("revoked"))
    );

    // Nothing stored holds a key.
    for entry in std::fs::read_dir(data)? {
        let bytes = std::fs::read(entry?.path())?;
        for secret in [&owner_key, &agent_key] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
    }
    // A second init of the same organisation is refused.
    let mut again = Process::spawn(&relay, &["--data-dir", data, "init"], &[])?;
    assert_eq!(again.wait().await?, Some(1));
    assert!(again.output().contains("already exists"));
    Ok(())
}

#[tokio::test]
async fn help_explains_where_keys_come_from() -> anyhow::Result<()> {
    let mut agent = Process::spawn(&binary("outpost-agent"), &["--help"], &[])?;
    assert_eq!(agent.wait().await?, Some(0));
    assert!(agent.output().contains("OUTPOST_AGENT_KEY"));
    let mut relay = Process::spawn(&binary("outpost-relay"), &["--help"], &[])?;
    assert_eq!(relay.wait().await?, Some(0));
    let help = relay.output();
    for command in ["serve", "init", "keys", "dev-certs"] {
        assert!(help.contains(command), "{help}");
    }
    Ok(())
}
