//! A relay or agent whose stderr reader went away (a log shipper restarted, the parent that
//! collected its output died) keeps working and still stops on SIGTERM. Before the fix, the
//! first log line after the pipe broke panicked inside whichever task wrote it, the signal
//! handler included, and the process ignored SIGTERM for good.

use std::process::Stdio;
use std::time::Duration;

use outpost_test_support::{Certs, Process, binary};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A relay home: store with one agent key, config, certificates.
struct Home {
    dir: tempfile::TempDir,
    certs: Certs,
}

impl Home {
    async fn create() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let certs = Certs::generate()?;
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        let relay = binary("outpost-relay");
        let mut init = Process::spawn(&relay, &["--data-dir", data, "init"], &[])?;
        anyhow::ensure!(init.wait().await? == Some(0), "{}", init.output());
        let mut keys = Process::spawn(
            &relay,
            &[
                "--data-dir",
                data,
                "keys",
                "create",
                "--agent",
                "a",
                "--quiet",
            ],
            &[],
        )?;
        anyhow::ensure!(keys.wait().await? == Some(0), "{}", keys.output());
        std::fs::write(dir.path().join("agent.key"), keys.output().trim())?;
        std::fs::write(
            dir.path().join("relay.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {data:?}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
                certs.cert, certs.key
            ),
        )?;
        Ok(Self { dir, certs })
    }

    fn relay_args(&self) -> Vec<String> {
        let config = self.dir.path().join("relay.toml");
        vec![
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "serve".into(),
        ]
    }

    fn agent_args(&self, port: u16) -> anyhow::Result<Vec<String>> {
        let config = self.dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "relay_url = \"wss://localhost:{port}\"\nkey_file = {:?}\nca_file = {:?}\n\
                 [servers.cat]\ntype = \"stdio\"\ncommand = \"/bin/cat\"\n",
                self.dir.path().join("agent.key"),
                self.certs.ca
            ),
        )?;
        Ok(vec![
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ])
    }
}

/// Starts `program` with stderr a pipe whose read end is closed at once, like a log reader
/// that went away; stdout stays readable.
fn spawn_with_closed_stderr(program: &str, args: &[String]) -> anyhow::Result<Child> {
    let mut child = Command::new(binary(program))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    drop(child.stderr.take());
    Ok(child)
}

/// Sends SIGTERM and returns the exit code, failing if the process does not stop in time.
async fn terminate(child: &mut Child) -> anyhow::Result<Option<i32>> {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid}");
    match tokio::time::timeout(STOP_WITHIN, child.wait()).await {
        Ok(status) => Ok(status?.code()),
        Err(_) => anyhow::bail!("still running {STOP_WITHIN:?} after SIGTERM"),
    }
}

fn port_of(line: &str) -> anyhow::Result<u16> {
    Ok(line.trim().rsplit(':').next().unwrap_or("").parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_a_log_reader_still_serves_and_stops() -> anyhow::Result<()> {
    let home = Home::create().await?;
    let mut relay = spawn_with_closed_stderr("outpost-relay", &home.relay_args())?;
    let mut stdout = BufReader::new(relay.stdout.take().expect("piped")).lines();
    let line = stdout.next_line().await?.unwrap_or_default();
    anyhow::ensure!(line.contains("listening on"), "relay said {line:?}");
    // An agent connecting makes the relay log ("agent connected") into the broken pipe.
    let mut agent = Process::spawn(
        &binary("outpost-agent"),
        &home
            .agent_args(port_of(&line)?)?
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    )?;
    agent.wait_for("tunnel established").await?;
    assert_eq!(terminate(&mut relay).await?, Some(0));
    // The agent saw the relay go away, as it should for a clean stop.
    agent.wait_for("tunnel lost").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_log_reader_still_connects_and_stops() -> anyhow::Result<()> {
    let home = Home::create().await?;
    let args = home.relay_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Process::spawn(&binary("outpost-relay"), &args, &[])?;
    let line = relay.wait_for("listening on").await?;
    let mut agent = spawn_with_closed_stderr("outpost-agent", &home.agent_args(port_of(&line)?)?)?;
    // The agent logs "tunnel established" into the broken pipe; the relay sees it arrive.
    relay.wait_for("agent connected").await?;
    assert_eq!(terminate(&mut agent).await?, Some(0));
    relay.wait_for("agent disconnected").await?;
    assert_eq!(relay.terminate().await?, Some(0));
    Ok(())
}

/// The relay's and agent's shutdown grace is 30 s by default, but with nothing in flight
/// they stop at once; a few seconds cover a loaded CI machine.
const STOP_WITHIN: Duration = Duration::from_secs(20);
