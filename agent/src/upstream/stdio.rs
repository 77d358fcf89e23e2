//! A stdio upstream of the stateful (2025) era: one child process per stream (a client
//! session), newline-delimited JSON-RPC on its stdin and stdout, stderr to the log at a bounded rate (and redacted). The child gets
//! only the environment its config names. Stopping it: close stdin, wait, then SIGTERM and
//! SIGKILL to its whole process group, and always reap it.
//!
//! Supervision: a child that exits, or stays silent for another `call_timeout` after a
//! call timed out (hung, then killed), has its in-flight calls answered with errors and
//! is restarted with backoff; the client's `initialize` is replayed to it so the session
//! survives. A child that keeps failing ends the stream.
//!
//! Stateless (2026-era) streams share one child per server instead: see `shared.rs`,
//! which starts, stops and reads its child with the functions here.

use std::process::Stdio;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use outpost_protocol::CloseCode;
use outpost_tunnel::{Stream, StreamError};
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;
use tracing::Instrument;

use super::arriving::{self, Arriving, FORWARD_AS_IT_ARRIVES_FROM, RelayClosed, Stop};
use super::calls::Via;
use super::{Admission, Calls, UpstreamContext, forward, send_owed, sleep_until};
use crate::config::StdioConfig;

pub(super) async fn serve(
    name: &str,
    config: &StdioConfig,
    stream: Stream,
    calls: Calls,
    ctx: UpstreamContext,
) {
    let Stream {
        sender,
        mut receiver,
        ..
    } = stream;
    let mut handshake = Handshake::default();
    let mut restarts = RestartBudget::default();
    let mut generation = 0u32;
    loop {
        let mut child = match spawn(config) {
            Ok(child) => child,
            Err(err) if generation == 0 => {
                tracing::warn!(server = name, command = %config.command, %err, "cannot start stdio server");
                sender
                    .close(
                        CloseCode::UpstreamUnavailable,
                        format!("cannot start the server: {err}"),
                    )
                    .await;
                return;
            }
            Err(err) => {
                tracing::warn!(server = name, %err, "cannot restart stdio server");
                sender
                    .close(
                        CloseCode::UpstreamExited,
                        format!("the server exited and cannot be restarted: {err}"),
                    )
                    .await;
                return;
            }
        };
        let pid = child.id();
        tracing::info!(server = name, pid, generation, "stdio server started");
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Unreachable: all three were configured as pipes in `spawn`.
            sender
                .close(CloseCode::UpstreamUnavailable, "no pipes to the server")
                .await;
            return;
        };
        let stderr_task = tokio::spawn(
            log_stderr(name.to_owned(), stderr, ctx.redactor.clone())
                .instrument(tracing::Span::current()),
        );
        let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
        let mut stray = StrayLines::default();

        let outcome = if generation > 0
            && let Err(outcome) = tokio::select! {
                replayed = replay(name, &handshake, &mut stdin, &mut stdout, &sender, &calls, ctx.max_message_len, &mut stray) => replayed,
                _ = ctx.cancel.cancelled() => Err(Outcome::Cancelled),
            } {
            outcome
        } else {
            // The two directions run concurrently and never wait on each other: a server
            // that writes before it reads cannot deadlock against a relay that does the same.
            let to_child = to_child(
                name,
                &mut receiver,
                &mut stdin,
                &sender,
                &calls,
                &mut handshake,
            );
            let from_child = relay_stdout(
                name,
                &mut stdout,
                &sender,
                &calls,
                ctx.max_message_len,
                &mut stray,
            );
            tokio::select! {
                outcome = to_child => outcome,
                outcome = from_child => outcome,
                _ = ctx.cancel.cancelled() => Outcome::Cancelled,
            }
        };
        drop(stdin);
        let status = stop(&mut child, pid, outcome).await;
        stderr_task.abort();
        match outcome {
            Outcome::RelayClosed | Outcome::Cancelled => {
                tracing::info!(server = name, pid, %status, "stdio server stopped");
                sender.close(CloseCode::Normal, "stream ended").await;
                return;
            }
            Outcome::Exited | Outcome::Hung => {
                let what = if matches!(outcome, Outcome::Hung) {
                    "was killed after it stopped answering"
                } else {
                    "exited"
                };
                tracing::warn!(server = name, pid, %status, "stdio server {what}");
                let text = format!("the server {what} ({status}) during the call");
                for (id, owed) in calls.take_all() {
                    let answer = owed.unwrap_or_else(|| {
                        super::calls::error_response(&id, super::ERROR_UPSTREAM, &text)
                    });
                    if sender.send(answer).await.is_err() {
                        return;
                    }
                    calls.handed();
                }
                let Some(delay) = restarts.next_delay() else {
                    sender
                        .close(
                            CloseCode::UpstreamExited,
                            format!(
                                "the server {what} ({status}); it failed {RESTART_LIMIT} times within {RESTART_WINDOW:?}, so it is not restarted again"
                            ),
                        )
                        .await;
                    return;
                };
                tracing::info!(server = name, ?delay, "restarting the stdio server");
                ctx.metrics.restarted(name);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.cancel.cancelled() => {
                        sender.close(CloseCode::Normal, "stream ended").await;
                        return;
                    }
                }
                generation += 1;
            }
        }
    }
}

pub(super) fn spawn(config: &StdioConfig) -> std::io::Result<Child> {
    let mut command = Command::new(&config.command);
    command
        .args(&config.args)
        .env_clear()
        .envs(config.env.iter().map(|(k, v)| (k, v.expose_secret())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = &config.cwd {
        command.current_dir(cwd);
    }
    command.spawn()
}

/// The client's side of the MCP handshake, kept to replay to a restarted server so the
/// client's session survives the crash.
#[derive(Debug, Default)]
struct Handshake {
    initialize: Option<Bytes>,
    initialized: Option<Bytes>,
}

/// Restarts allowed: at most [`RESTART_LIMIT`] within [`RESTART_WINDOW`], with a delay
/// that doubles from [`RESTART_MIN_DELAY`].
#[derive(Debug, Default)]
pub(super) struct RestartBudget {
    recent: std::collections::VecDeque<Instant>,
}

impl RestartBudget {
    pub(super) fn next_delay(&mut self) -> Option<Duration> {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= RESTART_LIMIT {
            return None;
        }
        let delay = RESTART_MIN_DELAY * 2u32.pow(self.recent.len() as u32);
        self.recent.push_back(now);
        Some(delay)
    }
}

/// Forwards client messages to the child after the local policy admitted them; answers
/// calls that outlive `call_timeout` and cancels them upstream; reports a child that stays
/// silent for another `call_timeout` after a timeout as hung.
async fn to_child(
    name: &str,
    receiver: &mut outpost_tunnel::StreamReceiver,
    stdin: &mut ChildStdin,
    sender: &outpost_tunnel::StreamSender,
    calls: &Calls,
    handshake: &mut Handshake,
) -> Outcome {
    loop {
        let wake = next_wake(calls);
        let message = tokio::select! {
            message = receiver.recv() => message,
            _ = sleep_until(wake) => {
                let now = Instant::now();
                for id in calls.expire(now) {
                    let timeout = calls.call_timeout().unwrap_or_default();
                    tracing::warn!(server = name, ?timeout, "call timed out; cancelling it upstream");
                    let (answer, cancel) = super::timed_out(&id, timeout);
                    if send_owed(sender, calls, &id, answer).await.is_err() {
                        return Outcome::RelayClosed;
                    }
                    if write_line(stdin, cancel).await.is_err() {
                        return Outcome::Exited;
                    }
                }
                if let (Some(silent), Some(timeout)) = (calls.silent_for(now), calls.call_timeout())
                    && silent >= hang_grace(timeout)
                {
                    return Outcome::Hung;
                }
                continue;
            }
        };
        match message {
            Ok(message) => {
                let read = match calls.admit(&message) {
                    Admission::Forward(read) => read,
                    Admission::Refuse { id, answer } => {
                        // Owed meanwhile: the send may wait behind a long answer, and the
                        // server's exit would drop it.
                        if send_owed(sender, calls, &id, answer).await.is_err() {
                            return Outcome::RelayClosed;
                        }
                        continue;
                    }
                };
                match read.method.as_deref() {
                    Some("initialize") => handshake.initialize = Some(message.clone()),
                    Some("notifications/initialized") => {
                        handshake.initialized = Some(message.clone());
                    }
                    _ => {}
                }
                // A server that stops reading stdin would block this loop, and with it the
                // call timeouts; with a call timeout set, a write that long means hung.
                let write = write_line(stdin, message);
                let written = match calls.call_timeout() {
                    Some(timeout) => match tokio::time::timeout(hang_grace(timeout), write).await {
                        Ok(written) => written,
                        Err(_) => {
                            tracing::warn!(server = name, "the server stopped reading its stdin");
                            return Outcome::Hung;
                        }
                    },
                    None => write.await,
                };
                if let Err(err) = written {
                    tracing::warn!(server = name, %err, "cannot write to the server's stdin");
                    return Outcome::Exited;
                }
            }
            Err(StreamError::TooLarge { len, max }) => {
                tracing::warn!(
                    server = name,
                    len,
                    max,
                    "client message over the tunnel limit"
                );
                return Outcome::RelayClosed;
            }
            Err(_) => return Outcome::RelayClosed,
        }
    }
}

/// When the stdin loop must look at the clock: the next call deadline, or the moment a
/// silent server counts as hung.
fn next_wake(calls: &Calls) -> Option<Instant> {
    let now = Instant::now();
    let hung_at = calls
        .silent_for(now)
        .zip(calls.call_timeout())
        .map(|(silent, timeout)| now + hang_grace(timeout).saturating_sub(silent));
    [calls.next_deadline(), hung_at].into_iter().flatten().min()
}

/// How long a server may stay silent after a call timed out before it counts as hung.
pub(super) fn hang_grace(call_timeout: Duration) -> Duration {
    call_timeout.max(MIN_HANG_GRACE)
}

/// Replays the client's `initialize` and `notifications/initialized` to a restarted
/// server and swallows its answer, which the client already had from the first one.
#[allow(clippy::too_many_arguments)]
async fn replay<R: AsyncBufRead + Unpin>(
    name: &str,
    handshake: &Handshake,
    stdin: &mut ChildStdin,
    stdout: &mut R,
    sender: &outpost_tunnel::StreamSender,
    calls: &Calls,
    max: usize,
    stray: &mut StrayLines,
) -> Result<(), Outcome> {
    let Some(initialize) = &handshake.initialize else {
        return Ok(());
    };
    let id = super::calls::peek(initialize).map(|(id, _)| id);
    write_line(stdin, initialize.clone())
        .await
        .map_err(|_| Outcome::Exited)?;
    let mut line = BytesMut::new();
    let answered = async {
        loop {
            match read_line(stdout, &mut line, max, None).await {
                Ok(Line::Message) => {
                    let message = line.split().freeze();
                    match super::calls::peek(&message) {
                        Some((answer_id, false)) if Some(&answer_id) == id.as_ref() => {
                            return Ok(());
                        }
                        // Notifications sent while starting up still reach the client.
                        _ if !message.iter().all(u8::is_ascii_whitespace)
                            && stray.passes(name, &message, calls)
                            && forward(sender, calls, message, Via::Shared).await.is_err() =>
                        {
                            return Err(Outcome::RelayClosed);
                        }
                        _ => {}
                    }
                }
                Ok(Line::TooLong { .. } | Line::Long) => {}
                Ok(Line::Eof) | Err(_) => return Err(Outcome::Exited),
            }
        }
    };
    match tokio::time::timeout(REPLAY_TIMEOUT, answered).await {
        Ok(Ok(())) => {}
        Ok(Err(outcome)) => return Err(outcome),
        Err(_) => {
            tracing::warn!(
                server = name,
                "the restarted server did not answer initialize"
            );
            return Err(Outcome::Hung);
        }
    }
    if let Some(initialized) = &handshake.initialized {
        write_line(stdin, initialized.clone())
            .await
            .map_err(|_| Outcome::Exited)?;
    }
    tracing::info!(
        server = name,
        "restarted server re-initialized; the session continues"
    );
    Ok(())
}

/// Forwards the server's stdout to the relay, line by line. A long line that answers an
/// open call goes on as it arrives ([`forward_as_it_arrives`]); any other line is read
/// whole first.
async fn relay_stdout<R: AsyncBufRead + Unpin>(
    name: &str,
    stdout: &mut R,
    sender: &outpost_tunnel::StreamSender,
    calls: &Calls,
    max: usize,
    stray: &mut StrayLines,
) -> Outcome {
    let mut line = BytesMut::new();
    // `None` while a long line that cannot go on early is read on whole.
    let mut long_from = Some(FORWARD_AS_IT_ARRIVES_FROM);
    loop {
        let reading = long_from.replace(FORWARD_AS_IT_ARRIVES_FROM);
        match read_line(stdout, &mut line, max, reading).await {
            Ok(Line::Long) => {
                match forward_as_it_arrives(name, stdout, &mut line, sender, calls, max).await {
                    Arrival::ReadWhole => long_from = None,
                    Arrival::Handled => {}
                    Arrival::Ended(outcome) => return outcome,
                }
            }
            Ok(Line::Message) => {
                let message = line.split().freeze();
                if message.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if !stray.passes(name, &message, calls) {
                    continue;
                }
                if forward(sender, calls, message, Via::Shared).await.is_err() {
                    return Outcome::RelayClosed;
                }
            }
            Ok(Line::TooLong {
                len,
                id,
                has_method,
            }) => {
                // A whole line, if a useless one, is word from the server.
                calls.heard();
                // An answer with no id found at its ends: with one call open, it can only be
                // that call's. A request or notification is answered by nobody.
                let answered = if has_method {
                    None
                } else {
                    id.or_else(|| calls.only_open())
                };
                if too_large(name, sender, calls, answered.as_deref(), len, max)
                    .await
                    .is_err()
                {
                    return Outcome::RelayClosed;
                }
            }
            Ok(Line::Eof) => return Outcome::Exited,
            Err(err) => {
                tracing::warn!(server = name, %err, "cannot read the server's stdout");
                return Outcome::Exited;
            }
        }
    }
}

/// Lines on a server's stdout that cannot be JSON-RPC messages: MCP's stdio transport
/// carries nothing else there, but servers print banners and log lines to stdout. Such a
/// line goes no further than the agent, whose log tells the site's operators (once per
/// process at `warn`, then at `debug`; its length, never its text, which may hold data).
/// It is still word from the server, which is not hung while it writes.
#[derive(Debug, Default)]
pub(super) struct StrayLines {
    seen: u64,
}

impl StrayLines {
    /// Whether `line` (not blank) goes on: it starts as a JSON object does, or as a batch
    /// of them (`[` then `{`: a log line may well start `[INFO]`). A line that does not is
    /// logged, and counted as word from the server ([`Calls::heard`]).
    pub(super) fn passes(&mut self, server: &str, line: &[u8], calls: &Calls) -> bool {
        if self.is_message(server, line) {
            return true;
        }
        calls.heard();
        false
    }

    /// [`StrayLines::passes`] without the calls, for a caller that notes itself that the
    /// server spoke: `false` (and the line logged) when it cannot be a message.
    pub(super) fn is_message(&mut self, server: &str, line: &[u8]) -> bool {
        let mut tokens = line.iter().filter(|b| !b.is_ascii_whitespace());
        if matches!(
            (tokens.next(), tokens.next()),
            (Some(b'{'), _) | (Some(b'['), Some(b'{'))
        ) {
            return true;
        }
        self.seen += 1;
        if self.seen == 1 {
            tracing::warn!(
                server,
                bytes = line.len(),
                "the server wrote a line on stdout that is not a JSON-RPC message; dropped (MCP servers on stdio log to stderr); more such lines are logged at debug"
            );
        } else {
            tracing::debug!(
                server,
                bytes = line.len(),
                lines = self.seen,
                "a line on the server's stdout that is not a JSON-RPC message dropped"
            );
        }
        false
    }
}

/// Logs a message over the limit and answers call `id`, if known, with an error instead.
async fn too_large(
    name: &str,
    sender: &outpost_tunnel::StreamSender,
    calls: &Calls,
    id: Option<&str>,
    len: usize,
    max: usize,
) -> Result<(), ()> {
    tracing::warn!(
        server = name,
        len,
        "server wrote a message over the tunnel limit"
    );
    let Some(id) = id else {
        return Ok(());
    };
    // An answer to a call already closed (timed out, cancelled) is late: dropped, as any
    // late answer is, rather than answered a second time.
    if !calls.answered(id) {
        calls.dropped_late(id);
        return Ok(());
    }
    let text =
        format!("the server's message of {len} bytes exceeds the tunnel's limit of {max} bytes");
    let error = super::calls::error_response(id, super::ERROR_TOO_LARGE, &text);
    send_owed(sender, calls, id, error).await
}

/// What became of a long line.
enum Arrival {
    /// Not an answer that can go on before its end: read it whole.
    ReadWhole,
    /// Dealt with: sent on, or abandoned with its call answered.
    Handled,
    /// The stream or the server ended.
    Ended(Outcome),
}

/// Sends a long line on as it arrives ([`super::arriving`]), when it is the answer to an
/// open call and its id comes before its result. `line` holds the line's start. A line cut
/// off by the server's exit is abandoned, and its call gets the error every open call gets
/// then; one given up on otherwise has the rest of it skipped.
async fn forward_as_it_arrives<R: AsyncBufRead + Unpin>(
    name: &str,
    stdout: &mut R,
    line: &mut BytesMut,
    sender: &outpost_tunnel::StreamSender,
    calls: &Calls,
    max: usize,
) -> Arrival {
    let Some(call) = arriving::streamable(calls, line, Via::Shared) else {
        return Arrival::ReadWhole;
    };
    let mut answer = Arriving::begin(name, sender, calls, call, max).await;
    // A CR that ended the last read: part of the line's end if an LF comes next.
    let mut cr = line.last() == Some(&b'\r');
    let start = line.split();
    if let Err(stop) = answer.push(&start[..start.len() - usize::from(cr)]).await {
        return given_up(answer, stop, stdout, calls, Rest::Unread).await;
    }
    loop {
        let available = match answer.by_deadline(stdout.fill_buf()).await {
            Some(Ok(available)) if !available.is_empty() => available,
            Some(read) => {
                if let Err(err) = read {
                    tracing::warn!(server = name, %err, "cannot read the server's stdout");
                }
                // The server's stdout ended mid-line: its exit answers every open call.
                let _ = answer.give_up(Stop::Broke).await;
                return Arrival::Ended(Outcome::Exited);
            }
            None => return given_up(answer, Stop::TimedOut, stdout, calls, Rest::Unread).await,
        };
        let (mut chunk, consumed) = match memchr::memchr(b'\n', available) {
            Some(end) => (&available[..end], end + 1),
            None => (available, available.len()),
        };
        let ends = consumed > chunk.len();
        // A CR before the LF ends the line too (JSON text has none of its own there),
        // also when the two arrive in different reads.
        let cr_before = std::mem::take(&mut cr) && !(ends && chunk.is_empty());
        if let [head @ .., b'\r'] = chunk {
            chunk = head;
            cr = !ends;
        }
        let mut pushed = Ok(());
        if cr_before {
            pushed = answer.push(b"\r").await;
        }
        if pushed.is_ok() {
            pushed = answer.push(chunk).await;
        }
        stdout.consume(consumed);
        let rest = if ends { Rest::Read } else { Rest::Unread };
        if let Err(stop) = pushed {
            return given_up(answer, stop, stdout, calls, rest).await;
        }
        if ends {
            return match answer.finish().await {
                Ok(()) => Arrival::Handled,
                Err(RelayClosed) => Arrival::Ended(Outcome::RelayClosed),
            };
        }
    }
}

/// Gives up on a long line's answer ([`Arriving::give_up`]) and skips what is left of the
/// line. A line read to its end means the server has been heard.
async fn given_up<R: AsyncBufRead + Unpin>(
    answer: Arriving<'_>,
    stop: Stop,
    stdout: &mut R,
    calls: &Calls,
    rest: Rest,
) -> Arrival {
    if answer.give_up(stop).await.is_err() {
        return Arrival::Ended(Outcome::RelayClosed);
    }
    match rest {
        Rest::Unread => skip_line(stdout, calls).await,
        Rest::Read => {
            calls.heard();
            Arrival::Handled
        }
    }
}

/// What is left on stdout of a line whose answer was given up.
#[derive(Clone, Copy)]
enum Rest {
    /// The line goes on: it is skipped.
    Unread,
    /// The line was read to its end.
    Read,
}

/// Reads past the end of the current line. While the server writes, a silence counted
/// since a timeout starts again from each read (a server that stops mid-line is still
/// found hung); once the line has ended the server has been heard.
async fn skip_line<R: AsyncBufRead + Unpin>(stdout: &mut R, calls: &Calls) -> Arrival {
    loop {
        let available = match stdout.fill_buf().await {
            Ok(available) if !available.is_empty() => available,
            _ => return Arrival::Ended(Outcome::Exited),
        };
        calls.still_writing();
        match memchr::memchr(b'\n', available) {
            Some(end) => {
                stdout.consume(end + 1);
                calls.heard();
                return Arrival::Handled;
            }
            None => {
                let all = available.len();
                stdout.consume(all);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    /// The server closed stdout or exited.
    Exited,
    /// The relay ended the stream (client session deleted, or the tunnel dropped).
    RelayClosed,
    /// The agent is stopping.
    Cancelled,
    /// The server stopped answering after a call timed out, and was killed.
    Hung,
}

/// Writes one message as one line. JSON text can hold a line break only as whitespace, so
/// replacing breaks with spaces keeps the message and the framing intact.
pub(super) async fn write_line(stdin: &mut ChildStdin, message: Bytes) -> std::io::Result<()> {
    if message.contains(&b'\n') || message.contains(&b'\r') {
        let flat: Vec<u8> = message
            .iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
            .collect();
        stdin.write_all(&flat).await?;
    } else {
        stdin.write_all(&message).await?;
    }
    stdin.write_all(b"\n").await?;
    stdin.flush().await
}

pub(super) enum Line {
    /// `line` holds a message, without its line break.
    Message,
    /// The line exceeded the limit and was skipped; `id` is the request it seems to answer,
    /// `has_method` whether it seems to be a request or notification instead of an answer.
    TooLong {
        len: usize,
        id: Option<String>,
        has_method: bool,
    },
    Eof,
    /// The line reached `long_from` bytes and has not ended: `line` holds its start, and
    /// reading on into the same `line` continues it.
    Long,
}

/// Reads one line into `line`, never holding more than `max` bytes of it: an oversized line
/// is skipped, keeping only its two ends to find the id of the request it answers. With
/// `long_from`, returns [`Line::Long`] once a line that has not ended reaches that size.
pub(super) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut BytesMut,
    max: usize,
    long_from: Option<usize>,
) -> std::io::Result<Line> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Message
            });
        }
        let (chunk, done) = match memchr::memchr(b'\n', available) {
            Some(end) => (&available[..end], end + 1),
            None => (available, available.len()),
        };
        let complete = done > chunk.len();
        if line.len() + chunk.len() > max {
            // Keep the head and a rolling tail to find the id; drop the middle.
            let head_len = line.len().min(SNIFF);
            let mut head = line[..head_len].to_vec();
            let mut tail: Vec<u8> = line[line.len().saturating_sub(SNIFF)..].to_vec();
            let mut len = line.len();
            line.clear();
            let mut pending = (chunk.to_vec(), complete, done);
            loop {
                let (bytes, complete, consumed) = pending;
                len += bytes.len();
                if head.len() < SNIFF {
                    head.extend_from_slice(&bytes[..bytes.len().min(SNIFF - head.len())]);
                }
                tail.extend_from_slice(&bytes);
                let excess = tail.len().saturating_sub(SNIFF);
                tail.drain(..excess);
                reader.consume(consumed);
                if complete {
                    return Ok(Line::TooLong {
                        len,
                        id: sniff_id(&tail).or_else(|| sniff_id(&head)),
                        has_method: contains(&head, b"\"method\"")
                            || contains(&tail, b"\"method\""),
                    });
                }
                let available = reader.fill_buf().await?;
                if available.is_empty() {
                    return Ok(Line::Eof);
                }
                pending = match memchr::memchr(b'\n', available) {
                    Some(end) => (available[..end].to_vec(), true, end + 1),
                    None => (available.to_vec(), false, available.len()),
                };
            }
        }
        line.extend_from_slice(chunk);
        reader.consume(done);
        if complete {
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            return Ok(Line::Message);
        }
        if long_from.is_some_and(|long| line.len() >= long) {
            return Ok(Line::Long);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Finds a top-level-looking `"id":` value in a fragment of JSON: a number or a string.
fn sniff_id(fragment: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(fragment);
    let at = text.rfind("\"id\":")?;
    let rest = text[at + 5..].trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        let end = quoted.find('"')?;
        Some(format!("\"{}\"", &quoted[..end]))
    } else {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        (end > 0).then(|| rest[..end].to_owned())
    }
}

/// Stops the child: it exited already, or stdin is closed and it gets a moment, then
/// SIGTERM to its process group, then SIGKILL. Always reaps it.
pub(super) async fn stop(child: &mut Child, pid: Option<u32>, outcome: Outcome) -> String {
    let patience = match outcome {
        Outcome::Exited => EXIT_WAIT,
        Outcome::RelayClosed | Outcome::Cancelled => STOP_WAIT,
        // A hung server gets no patience: it is signalled at once.
        Outcome::Hung => Duration::ZERO,
    };
    if let Ok(Ok(status)) = tokio::time::timeout(patience, child.wait()).await {
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        return status.to_string();
    }
    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
    if let Ok(Ok(status)) = tokio::time::timeout(TERM_WAIT, child.wait()).await {
        signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        return status.to_string();
    }
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.start_kill();
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(err) => format!("could not be reaped: {err}"),
    }
}

/// Signals the child's process group, so helpers it started (npx → node) stop with it.
fn signal_group(pid: Option<u32>, signal: nix::sys::signal::Signal) {
    // The pid saved at spawn: once the child is reaped, `Child::id` is gone, but its
    // group (npx and the node it started) may still be running.
    if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Copies the child's stderr to the log: lines cut to a length, at most a burst of lines
/// and then a steady rate, with a count of what was suppressed.
pub(super) async fn log_stderr(
    server: String,
    stderr: tokio::process::ChildStderr,
    redactor: std::sync::Arc<crate::redact::Redactor>,
) {
    let mut lines = BufReader::new(stderr).split(b'\n');
    let mut tokens = STDERR_BURST;
    let mut refilled = Instant::now();
    let mut suppressed = 0u64;
    while let Ok(Some(line)) = lines.next_segment().await {
        let now = Instant::now();
        let earned = (now - refilled).as_secs_f64() * STDERR_PER_SECOND;
        if earned >= 1.0 {
            tokens = (tokens + earned as u32).min(STDERR_BURST);
            refilled = now;
        }
        if tokens == 0 {
            suppressed += 1;
            continue;
        }
        tokens -= 1;
        if suppressed > 0 {
            tracing::warn!(
                server,
                suppressed,
                "stderr lines suppressed by the rate limit"
            );
            suppressed = 0;
        }
        // Redacted before cutting, so a cut cannot split a secret out of reach.
        let text = redactor.redact_text(&String::from_utf8_lossy(&line));
        let text: String = text.chars().take(STDERR_LINE).collect();
        tracing::info!(server, stderr = %text.trim_end(), "server stderr");
    }
}

/// How long a server that closed stdout has to exit before it is signalled.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long a server whose stdin was closed has to exit before SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// How long after SIGTERM before SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(3);
/// Bytes kept from each end of an oversized line to find its id.
const SNIFF: usize = 4096;
const STDERR_BURST: u32 = 50;
const STDERR_PER_SECOND: f64 = 10.0;
const STDERR_LINE: usize = 2048;
/// Restarts of a crashing server allowed within [`RESTART_WINDOW`].
pub(super) const RESTART_LIMIT: usize = 5;
pub(super) const RESTART_WINDOW: Duration = Duration::from_secs(60);
const RESTART_MIN_DELAY: Duration = Duration::from_millis(100);
/// How long a restarted server has to answer the replayed `initialize`.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_HANG_GRACE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::upstream::within;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut line = BytesMut::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader, &mut line, max, None).await.unwrap() {
                Line::Message => out.push(String::from_utf8(line.split().to_vec()).unwrap()),
                Line::TooLong { len, id, .. } => out.push(format!("too long {len} {id:?}")),
                Line::Long => out.push("long".to_owned()),
                Line::Eof => return out,
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_and_bounded() {
        assert_eq!(
            lines(b"{\"a\":1}\n{\"b\":2}\r\n", 100).await,
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        let long = format!(
            "{{\"result\":\"{}\",\"jsonrpc\":\"2.0\",\"id\":42}}\n{{}}\n",
            "x".repeat(10_000)
        );
        assert_eq!(
            lines(long.as_bytes(), 1000).await,
            vec![
                format!("too long {} Some(\"42\")", long.len() - 4),
                "{}".to_owned()
            ]
        );
        let long = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":\"req-1\",\"result\":\"{}\"}}\n",
            "x".repeat(10_000)
        );
        assert_eq!(
            lines(long.as_bytes(), 1000).await,
            vec![format!(
                "too long {} Some(\"\\\"req-1\\\"\")",
                long.len() - 1
            )]
        );
    }

    #[test]
    fn ids_are_sniffed_from_fragments() {
        assert_eq!(
            sniff_id(b"...\"jsonrpc\":\"2.0\",\"id\": 7}"),
            Some("7".into())
        );
        assert_eq!(
            sniff_id(b"{\"id\":\"abc\",\"result\""),
            Some("\"abc\"".into())
        );
        assert_eq!(sniff_id(b"no id here"), None);
    }

    #[tokio::test]
    async fn a_long_line_is_reported_at_its_size_and_reading_on_continues_it() {
        let input = format!("{}\n{{}}\n", "x".repeat(100));
        let mut reader = BufReader::with_capacity(7, input.as_bytes());
        let mut line = BytesMut::new();
        let read = read_line(&mut reader, &mut line, 1000, Some(50)).await;
        assert!(matches!(read, Ok(Line::Long)));
        assert!((50..100).contains(&line.len()), "{}", line.len());
        let read = read_line(&mut reader, &mut line, 1000, None).await;
        assert!(matches!(read, Ok(Line::Message)));
        assert_eq!(line.split(), "x".repeat(100).as_bytes());
        let read = read_line(&mut reader, &mut line, 1000, Some(50)).await;
        assert!(matches!(read, Ok(Line::Message)));
        assert_eq!(&line[..], b"{}");
    }

    /// A stdio server's stdout (a pipe holding up to `pipe` bytes) wired to `relay_stdout`,
    /// whose stream crosses a real tunnel (a credit window of `window` bytes) to a relay
    /// side the test reads, or not; one call (id 1) open.
    struct Wired {
        relay_side: outpost_tunnel::Stream,
        server_out: tokio::io::DuplexStream,
        agent: tokio::task::JoinHandle<(Outcome, Arc<Calls>)>,
        /// The calls the agent's side keeps, for a look while it runs.
        calls: Arc<Calls>,
        stop: tokio_util::sync::CancellationToken,
        _keep: (outpost_tunnel::Tunnel<outpost_protocol::AgentFrame>, Stream),
    }

    async fn wired(call_timeout: Option<Duration>, window: u32, pipe: usize) -> Wired {
        use outpost_tunnel::TunnelConfig;

        let config = TunnelConfig {
            heartbeat_interval: Duration::from_secs(10),
            chunk_len: 16 * 1024,
            max_message_len: 4 * 1024 * 1024,
            initial_window: window,
            peer_chunk_len: 16 * 1024,
            max_streams: 8,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let (relay_side, stream, _, agent_tunnel) =
            super::super::opened_stream(config, vec![], &stop).await;
        let (calls, _) = call_one_open(call_timeout);
        let (server_out, agent_in) = tokio::io::duplex(pipe);
        let sender = stream.sender.clone();
        let calls = Arc::new(calls);
        let agent_calls = calls.clone();
        let agent = tokio::spawn(async move {
            let calls = agent_calls;
            let mut stdout = BufReader::with_capacity(64 * 1024, agent_in);
            let mut stray = StrayLines::default();
            let outcome = relay_stdout(
                "erp",
                &mut stdout,
                &sender,
                &calls,
                4 * 1024 * 1024,
                &mut stray,
            )
            .await;
            (outcome, calls)
        });
        Wired {
            relay_side,
            server_out,
            agent,
            calls,
            stop,
            _keep: (agent_tunnel, stream),
        }
    }

    /// A server's calls, with call 1 (`tools/call` of `big`) open, and what they count in
    /// flight.
    fn call_one_open(call_timeout: Option<Duration>) -> (Calls, super::super::calls::InFlight) {
        let total = super::super::calls::InFlight::new();
        let (redactor, _) = crate::redact::Redactor::new(std::iter::empty());
        let policy = crate::policy::ToolPolicy::new(vec![], vec![], None, call_timeout).unwrap();
        let calls = Calls::new(
            total.clone(),
            Arc::new(super::super::calls::ServerRuntime::new(
                "erp".into(),
                policy,
            )),
            Arc::new(crate::metrics::Metrics::new()),
            Arc::new(redactor),
        );
        let request = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big"}}"#;
        assert!(matches!(calls.admit(request), Admission::Forward(_)));
        (calls, total)
    }

    /// The agent's side once the server has closed its stdout: it ended as for an exit.
    /// Stops the tunnel and gives back the calls.
    async fn exited(
        agent: tokio::task::JoinHandle<(Outcome, Arc<Calls>)>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Arc<Calls> {
        let (outcome, calls) = agent.await.unwrap();
        assert!(matches!(outcome, Outcome::Exited));
        stop.cancel();
        calls
    }

    /// An answer the tunnel refuses (over its message limit) is replaced by an error that
    /// is owed in its place: the client gets the error, and once it is sent the stream
    /// owes nothing (a draining agent can close the tunnel).
    #[tokio::test]
    async fn an_answer_over_the_limit_is_owed_once_as_its_error() {
        let config = outpost_tunnel::TunnelConfig {
            heartbeat_interval: Duration::from_secs(10),
            chunk_len: 16 * 1024,
            max_message_len: 1024,
            initial_window: 64 * 1024,
            peer_chunk_len: 16 * 1024,
            max_streams: 8,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let (mut relay_side, stream, _, _agent_tunnel) =
            super::super::opened_stream(config, vec![], &stop).await;
        let (calls, total) = call_one_open(None);
        let answer = Bytes::from(long_answer(2048));
        within(forward(&stream.sender, &calls, answer, Via::Shared))
            .await
            .expect("the error was sent");
        let received = within(relay_side.receiver.recv()).await.unwrap();
        let error: serde_json::Value = serde_json::from_slice(&received).unwrap();
        assert_eq!(error["id"], 1);
        assert_eq!(error["error"]["code"], super::super::ERROR_TOO_LARGE);
        assert_eq!(total.get(), 0, "the error was owed once, and is sent");
        stop.cancel();
    }

    /// An answer to call 1 with a text of `len` bytes of `x`.
    fn long_answer(len: usize) -> String {
        let head = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":""#;
        format!("{head}{}\"}}]}}}}", "x".repeat(len))
    }

    /// The answer goes on while the server writes it: with the relay not reading, the
    /// agent reads no further than the tunnel's credit allows, so a server writing a long
    /// answer is held back (read whole, the answer would be taken in at once); once the
    /// relay reads, the answer arrives intact and closes its call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_answer_is_sent_on_under_the_tunnels_credit() {
        let Wired {
            mut relay_side,
            mut server_out,
            agent,
            calls: _,
            stop,
            _keep,
        } = wired(None, 64 * 1024, 64 * 1024).await;
        let answer = long_answer(2 * 1024 * 1024);
        let written = answer.clone();
        let mut server = tokio::spawn(async move {
            server_out.write_all(written.as_bytes()).await.unwrap();
            server_out.write_all(b"\n").await.unwrap();
            server_out
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut server)
                .await
                .is_err(),
            "the agent took the whole answer in without sending it on"
        );
        let received = relay_side.receiver.recv().await.unwrap();
        assert_eq!(received.len(), answer.len());
        assert!(received == answer.as_bytes());
        drop(server.await.unwrap());
        let calls = exited(agent, stop).await;
        assert!(!calls.has_open("1"));
    }

    /// The next message the relay side receives, past an abandoned one (ending in NUL,
    /// which the relay drops) if one comes first: whether it does depends on how far the
    /// answer got before the deadline.
    async fn next_whole(relay_side: &mut outpost_tunnel::Stream) -> Bytes {
        let message = within(relay_side.receiver.recv()).await.unwrap();
        if message.last() == Some(&0) {
            return within(relay_side.receiver.recv()).await.unwrap();
        }
        message
    }

    /// `future`'s output; a test waiting longer than this has found a fault.
    async fn assert_timed_out_then_next_line(relay_side: &mut outpost_tunnel::Stream) {
        let timeout: serde_json::Value =
            serde_json::from_slice(&next_whole(relay_side).await).unwrap();
        assert_eq!(timeout["id"], 1, "{timeout}");
        assert_eq!(timeout["error"]["code"], super::super::ERROR_TIMEOUT);
        let next = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(&next[..], NEXT_LINE.trim_end().as_bytes());
    }

    const NEXT_LINE: &str = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n";

    /// At the call's deadline with the relay not taking the answer, the answer is
    /// abandoned and the call gets one answer, the timeout's error; the rest of the line
    /// is skipped and the next line goes on as usual.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_still_going_to_the_relay_at_the_deadline_gives_way_to_the_timeout() {
        let Wired {
            mut relay_side,
            mut server_out,
            agent,
            calls: _,
            stop,
            _keep,
        } = wired(Some(Duration::from_millis(200)), 64 * 1024, 64 * 1024).await;
        let server = tokio::spawn(async move {
            let answer = long_answer(2 * 1024 * 1024) + "\n" + NEXT_LINE;
            server_out.write_all(answer.as_bytes()).await.unwrap();
            server_out
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_timed_out_then_next_line(&mut relay_side).await;
        drop(server.await.unwrap());
        let calls = exited(agent, stop).await;
        assert!(!calls.has_open("1"));
    }

    /// The same when the server has written the whole line and only its last parts wait
    /// for the relay: the line is not skipped twice, so the next line still arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_met_on_the_last_parts_skips_nothing_after_the_line() {
        let Wired {
            mut relay_side,
            mut server_out,
            agent,
            calls: _,
            stop,
            _keep,
        } = wired(Some(Duration::from_millis(200)), 32 * 1024, 64 * 1024).await;
        // The agent reads the line in two parts of at most 64 KiB, and the first is held
        // back until the second: with a window of 32 KiB, the line has ended by the time
        // its parts wait for the relay.
        let answer = long_answer(100 * 1024) + "\n" + NEXT_LINE;
        server_out.write_all(answer.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_timed_out_then_next_line(&mut relay_side).await;
        drop(server_out);
        exited(agent, stop).await;
    }

    /// A deadline already past when a long answer starts wins at once, though the server's
    /// output and the tunnel's credit are both there to be had: nothing of the answer is
    /// sent (a timeout that polled the read or the write first would send parts of it,
    /// then abandon them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_already_past_wins_over_a_relay_that_keeps_up() {
        let Wired {
            mut relay_side,
            mut server_out,
            agent,
            calls: _,
            stop,
            _keep,
        } = wired(
            Some(Duration::from_millis(1)),
            2 * 1024 * 1024,
            4 * 1024 * 1024,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = long_answer(1024 * 1024) + "\n" + NEXT_LINE;
        server_out.write_all(answer.as_bytes()).await.unwrap();
        let first = within(relay_side.receiver.recv()).await.unwrap();
        assert_ne!(first.last(), Some(&0), "parts of the answer were sent");
        let timeout: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(timeout["error"]["code"], super::super::ERROR_TIMEOUT);
        let next = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(&next[..], NEXT_LINE.trim_end().as_bytes());
        drop(server_out);
        exited(agent, stop).await;
    }

    /// A line on stdout that cannot be a JSON-RPC message (a server's banner, a log line)
    /// goes no further than the agent; the messages around it do, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_line_on_stdout_stays_at_the_agent() {
        let Wired {
            mut relay_side,
            mut server_out,
            agent,
            calls: _,
            stop,
            _keep,
        } = wired(None, 64 * 1024, 64 * 1024).await;
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let lines = format!("Server running on stdio\n  [debug] ready\n{answer}\n[ ]\n{NEXT_LINE}");
        server_out.write_all(lines.as_bytes()).await.unwrap();
        drop(server_out);
        // Read before the tunnel stops, which ends the relay's side.
        assert_eq!(
            within(relay_side.receiver.recv()).await.unwrap(),
            answer.as_bytes()
        );
        let next = within(relay_side.receiver.recv()).await.unwrap();
        assert_eq!(&next[..], NEXT_LINE.trim_end().as_bytes());
        let calls = exited(agent, stop).await;
        assert!(!calls.has_open("1"));
    }

    /// [`wired`], with call 1 timed out: the server counts as silent since.
    async fn timed_out() -> Wired {
        let wired = wired(Some(Duration::from_millis(1)), 64 * 1024, 64 * 1024).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(wired.calls.expire(Instant::now()), ["1"]);
        assert!(wired.calls.silent_for(Instant::now()).is_some());
        wired
    }

    /// An answer over the tunnel's limit to a call that timed out is late: the client,
    /// answered already by the timeout, gets no second answer; and the server, which wrote
    /// it, is not silent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_over_the_limit_to_a_timed_out_call_is_dropped() {
        let Wired {
            mut relay_side,
            mut server_out,
            agent,
            calls,
            stop,
            _keep,
        } = timed_out().await;
        let mut line = long_answer(4 * 1024 * 1024).into_bytes();
        assert!(line.len() > 4 * 1024 * 1024, "over the agent's limit here");
        line.push(b'\n');
        server_out.write_all(&line).await.unwrap();
        // Read whole and dropped: the silence since the timeout ends with it.
        within(async {
            while calls.silent_for(Instant::now()).is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let note = "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n";
        server_out.write_all(note.as_bytes()).await.unwrap();
        let first = within(relay_side.receiver.recv()).await.unwrap();
        let first: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(first["method"], "notifications/message", "{first}");
        drop(server_out);
        exited(agent, stop).await;
    }

    /// A stray line is still word from the server: after a call timed out, the silence that
    /// would have the server killed as hung ends when it writes one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_line_on_stdout_is_word_from_the_server() {
        let Wired {
            relay_side: _relay_side,
            mut server_out,
            agent,
            calls,
            stop,
            _keep,
        } = timed_out().await;
        server_out.write_all(b"still thinking\n").await.unwrap();
        within(async {
            while calls.silent_for(Instant::now()).is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        drop(server_out);
        exited(agent, stop).await;
    }
}
