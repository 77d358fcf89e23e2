//! Runs the real `outpost-relay` and `outpost-agent` binaries for tests that need what
//! only a process has: its own log output, signals, exit codes. Output is collected line
//! by line so tests wait for a line instead of sleeping. Each runs in its own process
//! group, killed on drop, and sees none of the test run's `OUTPOST_*` variables.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

/// A running binary with its stdout and stderr collected.
pub struct Process {
    child: Child,
    /// Held open for programs that stop at the end of their input (`spawn_with_stdin`).
    _stdin: Option<ChildStdin>,
    output: Arc<Mutex<String>>,
    changed: watch::Receiver<usize>,
}

impl Process {
    /// Starts `binary` with `args` and extra environment `env`.
    pub fn spawn(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start(binary, args, env, false)
    }

    /// Like [`Process::spawn`], but standard input is a pipe held open while the process
    /// runs, for programs that stop at the end of their input (`openssl s_server`).
    pub fn spawn_with_stdin(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start(binary, args, env, true)
    }

    fn start(
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        keep_stdin: bool,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        // Hermetic: the test run's own OUTPOST_* variables (and TOKIO_WORKER_THREADS, for
        // any tokio program a test starts that reads it) must not configure the binary,
        // nor the test crate's package variables, which cargo and nextest set for the test
        // binary. A `cargo build` a test starts (the quickstart script's) would see
        // CARGO_MANIFEST_DIR change, which `ring`'s build script watches, and rebuild: it
        // relinked the relay and agent binaries while other tests were starting them.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("OUTPOST_")
                || name_text == "TOKIO_WORKER_THREADS"
                || name_text.starts_with("CARGO_PKG_")
                || name_text == "CARGO_MANIFEST_DIR"
                || name_text == "CARGO_MANIFEST_PATH"
            {
                command.env_remove(name);
            }
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .process_group(0)
            .stdin(if keep_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, changed) = watch::channel(0);
        let tx = Arc::new(tx);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(collect(stdout, output.clone(), tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(collect(stderr, output.clone(), tx));
        }
        Ok(Self {
            child,
            _stdin: stdin,
            output,
            changed,
        })
    }

    /// Waits until the output contains `needle`, and returns the line holding it.
    pub async fn wait_for(&mut self, needle: &str) -> anyhow::Result<String> {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_owned());
                }
                if self.changed.changed().await.is_err() {
                    anyhow::bail!("the process ended without printing {needle:?}");
                }
            }
        })
        .await;
        match found {
            Ok(result) => result,
            Err(_) => anyhow::bail!(
                "no {needle:?} within {WAIT:?}; output so far:\n{}",
                self.output()
            ),
        }
    }

    /// Everything printed so far, stdout and stderr interleaved by line.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        }
        self.wait().await
    }

    /// Waits (30 s at most) for the process to exit and returns its exit code.
    pub async fn wait(&mut self) -> anyhow::Result<Option<i32>> {
        self.wait_within(WAIT).await
    }

    /// Waits up to `limit` for the process to exit and returns its exit code.
    pub async fn wait_within(&mut self, limit: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(limit, self.child.wait()).await??;
        // Let the collectors drain what the process wrote last.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.changed.changed().await.is_ok() {}
        })
        .await;
        Ok(status.code())
    }
}

impl Drop for Process {
    /// Kills the whole process group, so what a script started (a relay, an agent, their
    /// children) goes with it even when its own cleanup never runs.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

async fn collect(
    stream: impl AsyncRead + Unpin,
    output: Arc<Mutex<String>>,
    changed: Arc<watch::Sender<usize>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut text = output.lock().unwrap_or_else(PoisonError::into_inner);
        text.push_str(&line);
        text.push('\n');
        drop(text);
        changed.send_modify(|n| *n += 1);
    }
}

const WAIT: Duration = Duration::from_secs(30);
