//! What an operator runs by hand, through the real binaries: `outpost-agent check` names
//! the failing step and its fix, a pinned relay key is enforced with both pins in the
//! error, SIGHUP reloads policy without dropping the tunnel, the agent's environ is closed
//! to other processes of its user, and both binaries answer their own health checks.

use std::os::linux::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use outpost_test_support::{McpClient, Process, binary, relay, server_everything};
use serde_json::json;

/// An agent config for `relay` with server-everything as `everything`, plus `extra`
/// top-level keys and `policy` keys of the server.
fn agent_config(
    dir: &Path,
    relay_url: &str,
    ca: &Path,
    extra: &str,
    policy: &str,
) -> std::path::PathBuf {
    let (node, script) = server_everything();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "relay_url = {relay_url:?}\nca_file = {ca:?}\n{extra}\n\
             [tunnel]\nconnect_timeout = \"3s\"\nreconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n\
             [servers.everything]\ntype = \"stdio\"\ncommand = {node:?}\nargs = [{script:?}, \"stdio\"]\n\
             inherit_env = [\"PATH\"]\n{policy}\n"
        ),
    )
    .unwrap();
    path
}

fn relay_pin(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let pin = outpost_agent::tunnel::dial::spki_pin(&der).unwrap();
    outpost_agent::tunnel::dial::pin_text(&pin)
}

use rustls_pki_types::pem::PemObject;

async fn check(config: &Path, key: &str) -> (Option<i32>, String) {
    let mut process = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap(), "check"],
        &[("OUTPOST_AGENT_KEY", key)],
    )
    .unwrap();
    let code = process.wait().await.unwrap();
    (code, process.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_walks_every_step_and_names_the_fix_for_the_first_failure() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.agent_key("site").await?;
    let ca = &relay.state.certs.ca;
    let dir = tempfile::tempdir()?;
    let pin = relay_pin(&relay.state.certs.cert);

    // All good, with the pin configured: every step passes and the pin is printed.
    let config = agent_config(
        dir.path(),
        &relay.tunnel_url(),
        ca,
        &format!("relay_spki_sha256 = [{pin:?}]"),
        "",
    );
    // An agent with the same key is running: the check must not take its place.
    let mut running = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", key.as_str())],
    )?;
    running.wait_for("tunnel established").await?;
    let (code, output) = check(&config, &key).await;
    assert_eq!(code, Some(0), "{output}");
    for step in [
        "ok    config",
        "ok    resolve",
        "ok    tcp",
        "ok    tls",
        "ok    key",
    ] {
        assert!(output.contains(step), "{step} missing: {output}");
    }
    assert!(output.contains(&pin), "{output}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !running.output().contains("tunnel lost"),
        "{}",
        running.output()
    );
    running.terminate().await?;

    // A refused key fails at the last step.
    let (code, output) = check(&config, "ak_live_0000000000000000000000000000000000").await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("FAIL  key") && output.contains("401"),
        "{output}"
    );
    assert!(output.contains("keys list"), "{output}");

    // Nothing listening: TCP fails with the firewall rule to add.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = agent_config(dir.path(), &format!("wss://127.0.0.1:{closed}"), ca, "", "");
    let (code, output) = check(&config, &key).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("FAIL  tcp"), "{output}");
    assert!(
        output.contains(&format!(
            "iptables -A OUTPUT -p tcp -d 127.0.0.1 --dport {closed} -j ACCEPT"
        )),
        "{output}"
    );

    // A pin that does not match: refused, naming the expected and the seen pin.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let config = agent_config(
        dir.path(),
        &relay.tunnel_url(),
        ca,
        &format!("relay_spki_sha256 = [{wrong:?}]"),
        "",
    );
    let (code, output) = check(&config, &key).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("FAIL  tls"), "{output}");
    assert!(output.contains(wrong) && output.contains(&pin), "{output}");
    assert!(output.contains("intercept"), "{output}");
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_mismatch_keeps_the_agent_out_and_a_match_lets_it_in() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.agent_key("site").await?;
    let dir = tempfile::tempdir()?;
    let ca = &relay.state.certs.ca;
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let config = agent_config(
        dir.path(),
        &relay.tunnel_url(),
        ca,
        &format!("relay_spki_sha256 = [{wrong:?}]"),
        "",
    );
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", key.as_str())],
    )?;
    let line = agent.wait_for("matches no pin").await?;
    assert!(line.contains(wrong), "{line}");
    assert!(!agent.output().contains("tunnel established"));
    agent.terminate().await?;

    // Two pins, as during a rotation: one matching is enough.
    let pin = relay_pin(&relay.state.certs.cert);
    let config = agent_config(
        dir.path(),
        &relay.tunnel_url(),
        ca,
        &format!("relay_spki_sha256 = [{wrong:?}, {pin:?}]"),
        "",
    );
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", key.as_str())],
    )?;
    agent.wait_for("tunnel established").await?;
    agent.terminate().await?;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policy_without_dropping_the_tunnel() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.agent_key("site").await?;
    let dir = tempfile::tempdir()?;
    let ca = &relay.state.certs.ca;
    let health = "[health]\nlisten = \"127.0.0.1:0\"";
    let config = agent_config(dir.path(), &relay.tunnel_url(), ca, health, "");
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", key.as_str())],
    )?;
    agent.wait_for("tunnel established").await?;
    let client_key = relay.client_key().await?;
    let mut client = McpClient::new(
        relay.http_client(),
        relay.mcp_url("site", "everything"),
        &client_key,
    );
    client.initialize().await?;
    let names = |result: serde_json::Value| -> Vec<String> {
        result["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = names(client.request("tools/list", json!({})).await?.result()?);
    assert!(before.contains(&"echo".to_owned()), "{before:?}");

    // Deny echo and add a second server, reload, and the same session sees echo gone.
    let (node, script) = server_everything();
    let second = format!(
        "deny_tools = [\"echo\"]\n[servers.second]\ntype = \"stdio\"\ncommand = {node:?}\nargs = [{script:?}, \"stdio\"]\ninherit_env = [\"PATH\"]\n"
    );
    agent_config(dir.path(), &relay.tunnel_url(), ca, health, &second);
    let pid = nix::unistd::Pid::from_raw(agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
    agent.wait_for("configuration reloaded").await?;
    let after = names(client.request("tools/list", json!({})).await?.result()?);
    assert!(!after.contains(&"echo".to_owned()), "{after:?}");
    let refused = client.call_tool("echo", json!({"message": "x"})).await?;
    assert_eq!(refused.error_code(), Some(-32602), "{:?}", refused.messages);
    // The new server was announced on the live tunnel and is reachable at once.
    agent
        .wait_for("announcing the reloaded server list")
        .await?;
    // The relay applies the announcement as it arrives: allow it a moment.
    let mut tries = 0;
    let mut added = loop {
        let mut added = McpClient::new(
            relay.http_client(),
            relay.mcp_url("site", "second"),
            &client_key,
        );
        match added.initialize().await {
            Ok(_) => break added,
            Err(_) if tries < 20 => tries += 1,
            Err(err) => return Err(err),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let echoed = added.call_tool("echo", json!({"message": "new"})).await?;
    assert!(echoed.result().is_ok(), "{:?}", echoed.messages);

    // A broken file is refused and the running configuration stays.
    std::fs::write(&config, "relay_url = 7\n")?;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
    agent.wait_for("configuration reload refused").await?;
    let still = client.call_tool("get-sum", json!({"a": 1, "b": 2})).await?;
    assert!(still.result().is_ok(), "{:?}", still.messages);

    // One tunnel all along.
    assert_eq!(
        agent.output().matches("tunnel established").count(),
        1,
        "{}",
        agent.output()
    );
    agent.terminate().await?;
    relay.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthchecks_answer_through_the_binaries() -> anyhow::Result<()> {
    let relay = relay().spawn().await?;
    let key = relay.agent_key("site").await?;
    let dir = tempfile::tempdir()?;
    let ca = &relay.state.certs.ca;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = agent_config(
        dir.path(),
        &relay.tunnel_url(),
        ca,
        &format!("[health]\nlisten = \"127.0.0.1:{port}\""),
        "",
    );
    let healthcheck = || async {
        let mut probe = Process::spawn(
            &binary("outpost-agent"),
            &["--config", config.to_str().unwrap(), "healthcheck"],
            &[("OUTPOST_AGENT_KEY", key.as_str())],
        )
        .unwrap();
        probe.wait().await.unwrap()
    };
    // Not running yet: unhealthy.
    assert_eq!(healthcheck().await, Some(1));
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &["--config", config.to_str().unwrap()],
        &[("OUTPOST_AGENT_KEY", key.as_str())],
    )?;
    agent.wait_for("tunnel established").await?;
    assert_eq!(healthcheck().await, Some(0));
    // The agent listens on its health port and nothing else.
    let listening = listening_ports(agent.pid().unwrap());
    assert_eq!(listening, vec![port], "{listening:?}");
    agent.terminate().await?;
    relay.stop().await;
    Ok(())
}

/// TCP ports a process listens on, from /proc.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // state 0A is LISTEN; field 9 is the inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_environ_is_closed_to_other_processes_of_its_user() -> anyhow::Result<()> {
    if std::fs::metadata("/proc/self")?.st_uid() != 0 {
        eprintln!("skipped: needs root to run the agent as another user");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "relay_url = \"wss://127.0.0.1:9\"\n[servers.x]\ntype = \"stdio\"\ncommand = \"/bin/true\"\n",
    )?;
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    // A copy uid 1000 can run wherever the checkout lives.
    let agent_binary = dir.path().join("outpost-agent");
    std::fs::copy(binary("outpost-agent"), &agent_binary)?;
    let mut agent = Process::spawn(
        Path::new("/usr/bin/setpriv"),
        &[
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--",
            agent_binary.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[(
            "OUTPOST_AGENT_KEY",
            "ak_live_secretsecretsecretsecretsecretsecre",
        )],
    )?;
    agent.wait_for("cannot establish the tunnel").await?;
    let pid = agent.pid().unwrap();
    // Another process of uid 1000 cannot read it.
    let mut reader = Process::spawn(
        Path::new("/usr/bin/setpriv"),
        &[
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--",
            "/bin/cat",
            &format!("/proc/{pid}/environ"),
        ],
        &[],
    )?;
    let code = reader.wait().await?;
    let output = reader.output();
    assert_ne!(code, Some(0), "{output}");
    assert!(output.contains("Permission denied"), "{output}");
    assert!(!output.contains("secretsecret"), "{output}");
    agent.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_healthcheck_trusts_only_its_own_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = outpost_test_support::Certs::generate()?;
    let pepper = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let env = [
        ("OUTPOST_PEPPER", pepper),
        ("OUTPOST_LISTEN", &*format!("127.0.0.1:{port}")),
        ("OUTPOST_DATA_DIR", dir.path().to_str().unwrap()),
        ("OUTPOST_TLS__CERT_FILE", certs.cert.to_str().unwrap()),
        ("OUTPOST_TLS__KEY_FILE", certs.key.to_str().unwrap()),
    ];
    let relay_binary = binary("outpost-relay");
    let healthcheck = || async {
        let mut probe = Process::spawn(&relay_binary, &["healthcheck"], &env).unwrap();
        let code = probe.wait().await.unwrap();
        (code, probe.output())
    };
    let (code, _) = healthcheck().await;
    assert_eq!(code, Some(1), "healthy with nothing listening");
    let mut init = Process::spawn(&relay_binary, &["init"], &env)?;
    assert_eq!(init.wait().await?, Some(0), "{}", init.output());
    let mut relay = Process::spawn(&relay_binary, &["serve"], &env)?;
    relay.wait_for("listening on").await?;
    let (code, output) = healthcheck().await;
    assert_eq!(code, Some(0), "{output}");
    // A listener serving another certificate is not this relay.
    let other = outpost_test_support::Certs::generate()?;
    let mut env_other = env;
    env_other[3] = ("OUTPOST_TLS__CERT_FILE", other.cert.to_str().unwrap());
    let mut probe = Process::spawn(&relay_binary, &["healthcheck"], &env_other)?;
    assert_eq!(probe.wait().await?, Some(1), "{}", probe.output());
    relay.terminate().await?;
    Ok(())
}
