//! An answer sent on to the relay as it arrives from the upstream, before its end: a long
//! stdio line, an HTTP response's JSON body, an SSE event's data. The relay then receives
//! a large result while the server is still writing it, instead of after the agent has
//! read it all. Only the answer to an open call whose id comes before its result goes so
//! ([`outpost_protocol::envelope::answer_head`], [`Calls::streamable`]); anything else is
//! read whole.
//!
//! Secrets are redacted part by part ([`RedactStream`]). An answer that cannot be finished
//! is abandoned (the relay drops it, see [`MessageWriter::abandon`]) and its call answered
//! as for a message read whole: over the limit, with the same error. At the call's
//! deadline, whether the server is still writing or the relay still taking the parts, the
//! answer is abandoned for the timeout's error: one answer either way. What is left of the
//! source's message is the caller's to skip.

use bytes::Bytes;
use outpost_protocol::envelope::answer_head;
use outpost_tunnel::{MessageWriter, StreamError, StreamSender};
use tokio::time::Instant;

use super::calls::{Deadline, Via};
use super::{Calls, ERROR_TIMEOUT, ERROR_TOO_LARGE, ERROR_UPSTREAM, answer_with_error};
use crate::redact::RedactStream;

/// Answers shorter than this are read whole: sending in parts costs more per message.
pub(super) const FORWARD_AS_IT_ARRIVES_FROM: usize = 64 * 1024;

/// The call that the message starting with `start` answers, and its deadline, when that
/// answer may go on as it arrives. `via`: see [`super::calls::Via`].
pub(super) fn streamable(calls: &Calls, start: &[u8], via: Via<'_>) -> Option<(String, Deadline)> {
    let id = answer_head(start)?;
    let deadline = calls.streamable(&id, via)?;
    Some((id, deadline))
}

/// The answer to one call, on its way to the relay.
pub(super) struct Arriving<'a> {
    /// The upstream, for the log.
    name: &'a str,
    sender: &'a StreamSender,
    calls: &'a Calls,
    /// The call it answers.
    id: String,
    deadline: Deadline,
    writer: MessageWriter<'a>,
    redaction: RedactStream<'a>,
    /// Bytes received from the upstream so far.
    len: usize,
    /// The tunnel's message limit.
    max: usize,
}

/// Why an answer stopped before its end.
#[derive(Debug)]
pub(super) enum Stop {
    /// The call's deadline passed.
    TimedOut,
    /// The tunnel refused a part: over the limit, or the stream is gone.
    NotSent(StreamError),
    /// The upstream wrote nothing more for the time [`Arriving::read_within`] allowed.
    Stalled(std::time::Duration),
    /// The upstream's message broke off, or turned out not to be an answer after all.
    Broke,
}

/// The relay's side of the stream is gone: nothing more can be sent on it.
#[derive(Debug)]
pub(super) struct RelayClosed;

impl<'a> Arriving<'a> {
    /// Starts sending the answer to call `id`, open until `deadline`, once the stream's
    /// earlier messages are sent. `max`: the tunnel's message limit.
    pub(super) async fn begin(
        name: &'a str,
        sender: &'a StreamSender,
        calls: &'a Calls,
        (id, deadline): (String, Deadline),
        max: usize,
    ) -> Self {
        Self {
            name,
            sender,
            calls,
            id,
            deadline,
            writer: sender.begin().await,
            redaction: calls.redaction(),
            len: 0,
            max,
        }
    }

    /// Sends on the next part received, redacted. `NotSent(TooLarge)` once the parts so far
    /// exceed the tunnel's limit.
    pub(super) async fn push(&mut self, part: &[u8]) -> Result<(), Stop> {
        self.receive(part.len())?;
        let ready = self.redaction.push(part);
        self.send(ready).await
    }

    /// [`Arriving::push`] for a part that is a buffer of its own: passed on uncopied when
    /// nothing is redacted.
    pub(super) async fn push_owned(&mut self, part: Bytes) -> Result<(), Stop> {
        self.receive(part.len())?;
        let ready = self.redaction.push_owned(part);
        self.send(ready).await
    }

    /// Counts `len` more bytes received; refused, before redaction sees them, once the
    /// message is over the limit.
    fn receive(&mut self, len: usize) -> Result<(), Stop> {
        self.len += len;
        if self.len > self.max {
            return Err(Stop::NotSent(StreamError::TooLarge {
                len: self.len,
                max: self.max,
            }));
        }
        self.calls.heard();
        Ok(())
    }

    /// Writes redacted bytes to the message, by the call's deadline.
    async fn send(&mut self, ready: Bytes) -> Result<(), Stop> {
        match by_deadline(self.deadline, self.writer.write(ready)).await {
            Some(Ok(())) => Ok(()),
            Some(Err(err)) => Err(Stop::NotSent(err)),
            None => Err(Stop::TimedOut),
        }
    }

    /// `future`'s output, or `None` once the call's deadline has passed: also when the
    /// future would be ready at once (a server that keeps writing past the deadline).
    pub(super) async fn by_deadline<F: std::future::Future>(&self, future: F) -> Option<F::Output> {
        by_deadline(self.deadline, future).await
    }

    /// `read`'s output, the upstream's next part: by the call's deadline (`TimedOut`), and
    /// within `stall` (`Stalled`). The stream's other messages wait behind an answer going
    /// on (a stream carries one message at a time), so one whose upstream goes quiet in
    /// the middle is not waited for long.
    pub(super) async fn read_within<F: std::future::Future>(
        &self,
        read: F,
        stall: std::time::Duration,
    ) -> Result<F::Output, Stop> {
        // The stall's bound, when it comes before the deadline; one past what `Instant` can
        // hold is no bound.
        let stalled = Instant::now()
            .checked_add(stall)
            .filter(|stalled| self.deadline.is_none_or(|at| at > *stalled));
        match stalled {
            Some(stalled) => by_deadline(Some(stalled), read)
                .await
                .ok_or(Stop::Stalled(stall)),
            None => by_deadline(self.deadline, read).await.ok_or(Stop::TimedOut),
        }
    }

    /// Sends the last parts and ends the message, then closes the call; or, if that fails,
    /// gives up as [`Arriving::give_up`] does. The call stays open until the message has
    /// ended, so that if this task is dropped on the way (the server's exit ends the
    /// session's loop), the exit's error still answers it.
    pub(super) async fn finish(mut self) -> Result<(), RelayClosed> {
        let last = self.redaction.finish();
        if let Err(stop) = self.send(last).await {
            return self.give_up(stop).await;
        }
        let Self {
            name,
            calls,
            id,
            writer,
            redaction,
            ..
        } = self;
        calls.note_redacted(redaction.count());
        if writer.finish().await.is_err() {
            return Err(RelayClosed);
        }
        if !calls.streamed(&id) {
            // Its deadline passed while the last part waited for the tunnel: the timeout's
            // error follows the answer, and the relay, which has the answer, drops it.
            tracing::debug!(server = name, "a call timed out as its answer ended");
        }
        Ok(())
    }

    /// Abandons the answer. Past the deadline or over the limit, the call gets the error it
    /// would have had as a message read whole (here, unless `Calls::expire` got to it
    /// first and sends it); stalled, an upstream error. Broken off, the call stays open:
    /// the caller says what became of it. Any other refusal means the stream is gone.
    pub(super) async fn give_up(self, stop: Stop) -> Result<(), RelayClosed> {
        let Self {
            name,
            sender,
            calls,
            id,
            writer,
            redaction,
            ..
        } = self;
        calls.note_redacted(redaction.count());
        let error = match stop {
            Stop::NotSent(StreamError::TooLarge { max, .. }) => {
                tracing::warn!(
                    server = name,
                    max,
                    "server wrote a message over the tunnel limit"
                );
                // Unless its timeout answered it while the abandon waited for the tunnel.
                // The message's whole length is not known: only that it passed the limit.
                Some((
                    ERROR_TOO_LARGE,
                    format!("the server's message exceeds the tunnel's limit of {max} bytes"),
                ))
            }
            Stop::NotSent(_) => return Err(RelayClosed),
            Stop::TimedOut => {
                let timeout = calls.call_timeout().unwrap_or_default();
                tracing::warn!(
                    server = name,
                    ?timeout,
                    "call timed out while its answer was arriving"
                );
                Some((
                    ERROR_TIMEOUT,
                    format!(
                        "the call exceeded the agent's call_timeout of {timeout:?} while its answer was arriving"
                    ),
                ))
            }
            Stop::Stalled(stall) => {
                tracing::warn!(
                    server = name,
                    stalled_for = ?stall,
                    "server stopped writing in the middle of an answer"
                );
                Some((
                    ERROR_UPSTREAM,
                    format!("the server stopped writing for {stall:?} in the middle of its answer"),
                ))
            }
            Stop::Broke => None,
        };
        if writer.abandon().await.is_err() {
            return Err(RelayClosed);
        }
        let Some((code, text)) = error else {
            return Ok(());
        };
        let closed_here = match code {
            ERROR_TIMEOUT => calls.time_out_arriving(&id),
            _ => calls.answered(&id),
        };
        if closed_here
            && answer_with_error(sender, calls, &id, code, &text)
                .await
                .is_err()
        {
            return Err(RelayClosed);
        }
        Ok(())
    }
}

/// `future`'s output, or `None` once `deadline` has passed (see [`Arriving::by_deadline`]).
async fn by_deadline<F: std::future::Future>(deadline: Deadline, future: F) -> Option<F::Output> {
    match deadline {
        Some(at) if Instant::now() >= at => None,
        Some(at) => tokio::time::timeout_at(at, future).await.ok(),
        None => Some(future.await),
    }
}
