//! The README's first command: `scripts/quickstart.sh --once` builds, brings up a relay and
//! an agent with server-everything, and makes a tool call through them.

use outpost_test_support::{Process, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_brings_up_a_working_relay_and_agent() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let script = workspace_root().join("scripts/quickstart.sh");
    let mut quickstart = Process::spawn(
        &script,
        &["--once"],
        &[
            ("QUICKSTART_PORT", "0"),
            ("QUICKSTART_DIR", state.path().to_str().unwrap()),
        ],
    )?;
    // It installs tools, builds (a no-op here: `Process` keeps the test crate's CARGO_*
    // package variables from it) and starts node: slow on a loaded machine.
    let code = quickstart
        .wait_within(std::time::Duration::from_secs(100))
        .await?;
    let output = quickstart.output();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("Echo: Hello from the other side of the firewall"),
        "{output}"
    );
    assert!(output.contains("the call went through"));
    assert!(
        output.contains("\"Authorization\": \"Bearer pk_live_"),
        "client configs printed"
    );
    // It stopped what it started: nothing listens on the port any more.
    let url = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("relay:"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("relay address printed")
        .to_owned();
    let port: u16 = url.rsplit(':').next().unwrap().parse()?;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "{url} still listening"
    );
    Ok(())
}
