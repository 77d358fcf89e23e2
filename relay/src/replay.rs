//! The replay buffer of one client session (2025 era): the events the relay sent, or
//! would have sent, on the session's resumable SSE streams (each POST's and the GET
//! stream), so that a client whose connection broke can come back with `GET` and
//! `Last-Event-ID` and get what that stream missed, and only that stream's events.
//!
//! Owns the event ids (`{tag}-{stream}-{seq}`: a random tag per session, `g` for the GET
//! stream or `p{n}` for the session's n-th POST, and the event's position in its stream,
//! from 1; position 0 is the priming event, which carries no message) and the eviction
//! rule: one budget of events and bytes per session, the oldest event dropped first. A
//! POST's stream is released [`DELIVERED_GRACE`] after its response delivered the last
//! answer: handed to the connection is not yet received, so a client whose connection
//! broke at that moment can still get it.
//! Memory only: nothing here is ever written to the store or the log. Does not know
//! about HTTP or channels (see `router.rs` and `mcp_endpoint.rs`).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use tokio::time::Instant;

/// One SSE stream of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StreamName {
    /// The session's `GET` stream.
    Get,
    /// The response stream of the session's POST with this number.
    Post(u64),
}

/// How much one session may keep for replay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayLimits {
    /// Events kept at most, over all the session's streams.
    pub(crate) events: usize,
    /// Bytes of message data kept at most, over all the session's streams.
    pub(crate) bytes: usize,
}

/// Why a `Last-Event-ID` cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ReplayError {
    /// Not an event id this relay issues.
    #[error("not an event id of this relay")]
    Malformed,
    /// An id of another session, or of a stream this session no longer holds (answered
    /// and delivered), or one never issued.
    #[error("unknown in this session")]
    Unknown,
    /// Events after the id were dropped to stay within the session's budget.
    #[error("too old: events after it were evicted")]
    Evicted,
}

/// The session's replay buffer.
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    /// Random per session, so an id of one session names nothing in another.
    tag: String,
    limits: ReplayLimits,
    /// Every kept event, oldest first, over all streams.
    events: VecDeque<Kept>,
    /// Bytes of `events`' bodies.
    bytes: usize,
    /// The streams that can be resumed, with their positions.
    streams: HashMap<StreamName, Cursor>,
    /// Delivered streams in the order they were delivered, so releasing the ones past
    /// their grace looks at those only, not at every stream on every event. An entry
    /// whose stream was forgotten meanwhile (evicted, resumed to its end) is skipped.
    delivered: VecDeque<(Instant, StreamName)>,
}

#[derive(Debug)]
struct Kept {
    stream: StreamName,
    seq: u64,
    body: Bytes,
}

#[derive(Debug, Default)]
struct Cursor {
    /// Position of the stream's last event (0: none yet).
    last: u64,
    /// Highest position dropped by eviction (0: none).
    evicted: u64,
    /// Whether the stream has all its events: its POST is answered.
    finished: bool,
    /// When a response handed the complete stream to its connection.
    delivered: Option<Instant>,
}

impl ReplayBuffer {
    /// An empty buffer with a fresh random tag.
    pub(crate) fn new(limits: ReplayLimits) -> Self {
        Self {
            tag: crate::auth::random_id("", TAG_BYTES),
            limits,
            events: VecDeque::new(),
            bytes: 0,
            streams: HashMap::new(),
            delivered: VecDeque::new(),
        }
    }

    /// The session's tag, the first part of its event ids.
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// The id of event `seq` of `stream`.
    #[cfg(test)]
    fn event_id(&self, stream: StreamName, seq: u64) -> String {
        event_id(&self.tag, stream, seq)
    }

    /// Starts keeping `stream` (no-op if it is kept already).
    pub(crate) fn open(&mut self, stream: StreamName) {
        self.streams.entry(stream).or_default();
    }

    /// Whether `stream` is kept.
    pub(crate) fn holds(&self, stream: StreamName) -> bool {
        self.streams.contains_key(&stream)
    }

    /// Position of the last event of `stream` (0 when none).
    pub(crate) fn last(&self, stream: StreamName) -> u64 {
        self.streams.get(&stream).map_or(0, |c| c.last)
    }

    /// Keeps `body` as the next event of `stream` (opened if needed) and returns its
    /// position. Older events are evicted to stay within the budget; an event larger
    /// than the whole byte budget is numbered but not kept.
    pub(crate) fn push(&mut self, stream: StreamName, body: Bytes) -> u64 {
        if !self.keeps(body.len()) {
            return self.number(stream);
        }
        self.purge_delivered();
        let cursor = self.streams.entry(stream).or_default();
        cursor.last += 1;
        let seq = cursor.last;
        while self.events.len() >= self.limits.events || self.bytes + body.len() > self.limits.bytes
        {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.body.len();
            if let Some(cursor) = self.streams.get_mut(&old.stream) {
                cursor.evicted = cursor.evicted.max(old.seq);
                // A complete stream with nothing left cannot be resumed: forget it, so
                // streams whose responses were never seen to end do not pile up.
                if cursor.finished && cursor.evicted == cursor.last {
                    self.streams.remove(&old.stream);
                }
            }
        }
        self.bytes += body.len();
        self.events.push_back(Kept { stream, seq, body });
        seq
    }

    /// The largest event that would be kept: the whole byte budget (none when no event
    /// may be kept).
    pub(crate) fn largest_kept(&self) -> Option<usize> {
        (self.limits.events > 0).then_some(self.limits.bytes)
    }

    fn keeps(&self, len: usize) -> bool {
        self.largest_kept().is_some_and(|largest| len <= largest)
    }

    /// Numbers the next event of `stream` (opened if needed) without keeping it, as
    /// [`Self::push`] does with one too large to keep: a resumption from before it is
    /// then refused as evicted.
    pub(crate) fn number(&mut self, stream: StreamName) -> u64 {
        self.purge_delivered();
        let cursor = self.streams.entry(stream).or_default();
        cursor.last += 1;
        cursor.evicted = cursor.last;
        cursor.last
    }

    /// Marks `stream` complete: its POST is answered, nothing more will come.
    pub(crate) fn finish(&mut self, stream: StreamName) {
        if let Some(cursor) = self.streams.get_mut(&stream) {
            cursor.finished = true;
        }
    }

    /// Whether `stream` is kept and complete.
    #[cfg(test)]
    fn is_finished(&self, stream: StreamName) -> bool {
        self.streams.get(&stream).is_some_and(|c| c.finished)
    }

    /// A response handed all of the complete `stream` to its connection: it is released
    /// after [`DELIVERED_GRACE`].
    pub(crate) fn delivered(&mut self, stream: StreamName) {
        let Some(cursor) = self.streams.get_mut(&stream).filter(|c| c.finished) else {
            return;
        };
        if cursor.delivered.is_some() {
            return;
        }
        let now = Instant::now();
        cursor.delivered = Some(now);
        self.delivered.push_back((now, stream));
        // Most delivered streams are forgotten by eviction long before their grace ends;
        // drop their entries once they outnumber the streams still kept.
        if self.delivered.len() > 2 * self.streams.len() + 64 {
            let streams = &self.streams;
            self.delivered
                .retain(|(at, name)| streams.get(name).is_some_and(|c| c.delivered == Some(*at)));
        }
    }

    /// Releases the streams delivered longer than [`DELIVERED_GRACE`] ago.
    fn purge_delivered(&mut self) {
        let now = Instant::now();
        while let Some(&(at, stream)) = self.delivered.front() {
            if at + DELIVERED_GRACE > now {
                break;
            }
            self.delivered.pop_front();
            if self
                .streams
                .get(&stream)
                .is_some_and(|c| c.delivered == Some(at))
            {
                self.release(stream);
            }
        }
    }

    /// Forgets `stream` and its events (delivered, or no longer resumable).
    pub(crate) fn release(&mut self, stream: StreamName) {
        if self.streams.remove(&stream).is_none() {
            return;
        }
        let mut freed = 0;
        self.events.retain(|e| {
            let keep = e.stream != stream;
            if !keep {
                freed += e.body.len();
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Forgets everything (the session ended).
    pub(crate) fn clear(&mut self) {
        self.events.clear();
        self.streams.clear();
        self.delivered.clear();
        self.bytes = 0;
    }

    /// The stream `last_event_id` names, and its kept events after it, in order.
    pub(crate) fn after(
        &mut self,
        last_event_id: &str,
    ) -> Result<(StreamName, Vec<(u64, Bytes)>), ReplayError> {
        self.purge_delivered();
        let (tag, stream, seq) = parse(last_event_id).ok_or(ReplayError::Malformed)?;
        if tag != self.tag {
            return Err(ReplayError::Unknown);
        }
        let cursor = self.streams.get(&stream).ok_or(ReplayError::Unknown)?;
        if seq > cursor.last {
            return Err(ReplayError::Unknown);
        }
        // The event right after the id must still be here (or not exist yet).
        if cursor.evicted > seq {
            return Err(ReplayError::Evicted);
        }
        let events: Vec<(u64, Bytes)> = self
            .events
            .iter()
            .filter(|e| e.stream == stream && e.seq > seq)
            .map(|e| (e.seq, e.body.clone()))
            .collect();
        // A complete stream the client has all of: nothing to resume.
        if cursor.finished && events.is_empty() {
            self.release(stream);
            return Err(ReplayError::Unknown);
        }
        Ok((stream, events))
    }

    /// Bytes kept now (for tests and metrics).
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.bytes
    }
}

/// The id of event `seq` of `stream` in the session tagged `tag`.
pub(crate) fn event_id(tag: &str, stream: StreamName, seq: u64) -> String {
    match stream {
        StreamName::Get => format!("{tag}-g-{seq}"),
        StreamName::Post(post) => format!("{tag}-p{post}-{seq}"),
    }
}

/// Splits `{tag}-{stream}-{seq}`.
fn parse(id: &str) -> Option<(&str, StreamName, u64)> {
    let mut parts = id.trim().splitn(3, '-');
    let tag = parts.next()?;
    let stream = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let stream = match stream {
        "g" => StreamName::Get,
        post => StreamName::Post(post.strip_prefix('p')?.parse().ok()?),
    };
    (tag.len() == TAG_BYTES * 2).then_some((tag, stream, seq))
}

/// How long a delivered stream stays resumable.
pub(crate) const DELIVERED_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
/// Random bytes in a session's event-id tag.
const TAG_BYTES: usize = 6;

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(events: usize, bytes: usize) -> ReplayBuffer {
        ReplayBuffer::new(ReplayLimits { events, bytes })
    }

    #[test]
    fn replays_only_the_named_stream_after_the_id() {
        let mut replay = buffer(16, 1024);
        let post = StreamName::Post(3);
        replay.open(post);
        let first = replay.push(post, Bytes::from_static(b"a"));
        replay.push(StreamName::Get, Bytes::from_static(b"other"));
        replay.push(post, Bytes::from_static(b"b"));
        replay.push(post, Bytes::from_static(b"c"));
        let id = replay.event_id(post, first);
        let (stream, events) = replay.after(&id).unwrap();
        assert_eq!(stream, post);
        let bodies: Vec<&[u8]> = events.iter().map(|(_, b)| b.as_ref()).collect();
        assert_eq!(bodies, vec![&b"b"[..], b"c"]);
        // The priming id (position 0) replays everything.
        assert_eq!(replay.after(&replay.event_id(post, 0)).unwrap().1.len(), 3);
    }

    #[test]
    fn refuses_ids_of_other_sessions_unknown_streams_and_evicted_events() {
        let mut replay = buffer(3, 1024);
        let other = buffer(2, 1024);
        let post = StreamName::Post(0);
        replay.push(post, Bytes::from_static(b"1"));
        assert_eq!(
            replay.after(&other.event_id(post, 1)).unwrap_err(),
            ReplayError::Unknown
        );
        assert_eq!(
            replay
                .after(&replay.event_id(StreamName::Post(9), 0))
                .unwrap_err(),
            ReplayError::Unknown
        );
        assert_eq!(
            replay.after("nonsense").unwrap_err(),
            ReplayError::Malformed
        );
        assert_eq!(
            replay.after(&replay.event_id(post, 7)).unwrap_err(),
            ReplayError::Unknown
        );
        replay.push(post, Bytes::from_static(b"2"));
        replay.push(StreamName::Get, Bytes::from_static(b"g"));
        replay.push(post, Bytes::from_static(b"3"));
        // Event 1 was evicted: resuming after 0 would miss it, after 1 would not.
        assert_eq!(
            replay.after(&replay.event_id(post, 0)).unwrap_err(),
            ReplayError::Evicted
        );
        assert_eq!(replay.after(&replay.event_id(post, 1)).unwrap().1.len(), 2);
    }

    #[test]
    fn stays_within_its_byte_budget_and_forgets_released_streams() {
        let mut replay = buffer(100, 10);
        let post = StreamName::Post(1);
        for _ in 0..5 {
            replay.push(post, Bytes::from_static(b"abcd"));
        }
        assert!(replay.kept_bytes() <= 10);
        replay.push(StreamName::Get, Bytes::from(vec![0u8; 11]));
        assert!(replay.kept_bytes() <= 10);
        assert_eq!(
            replay
                .after(&replay.event_id(StreamName::Get, 0))
                .unwrap_err(),
            ReplayError::Evicted
        );
        replay.finish(post);
        assert!(replay.is_finished(post));
        replay.release(post);
        assert!(!replay.holds(post));
        assert_eq!(replay.kept_bytes(), 0);
        // A complete stream whose events were all evicted is forgotten.
        let old = StreamName::Post(2);
        replay.push(old, Bytes::from_static(b"abcd"));
        replay.finish(old);
        replay.push(StreamName::Get, Bytes::from(vec![0u8; 10]));
        assert!(!replay.holds(old));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivered_stream_is_released_after_its_grace() {
        let mut replay = buffer(16, 1024);
        let post = StreamName::Post(0);
        replay.open(post);
        let seq = replay.push(post, Bytes::from_static(b"answer"));
        replay.finish(post);
        replay.delivered(post);
        // Within the grace, a client that lost the answer still gets it ...
        assert_eq!(replay.after(&replay.event_id(post, 0)).unwrap().1.len(), 1);
        // ... and one that has it all has nothing to resume.
        assert_eq!(
            replay.after(&replay.event_id(post, seq)).unwrap_err(),
            ReplayError::Unknown
        );
        let get = StreamName::Get;
        replay.push(get, Bytes::from_static(b"g"));
        let other = StreamName::Post(1);
        replay.open(other);
        replay.push(other, Bytes::from_static(b"x"));
        replay.finish(other);
        replay.delivered(other);
        tokio::time::advance(DELIVERED_GRACE).await;
        assert_eq!(
            replay.after(&replay.event_id(other, 0)).unwrap_err(),
            ReplayError::Unknown
        );
        assert!(replay.holds(get));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_session_keeps_its_bookkeeping_bounded_and_releases_in_order() {
        let mut replay = buffer(64, 1 << 20);
        // Thousands of answered POSTs within one grace: eviction forgets most of them, and
        // the delivery queue does not outgrow the streams still kept.
        for post in 0..5_000 {
            let stream = StreamName::Post(post);
            replay.open(stream);
            replay.push(stream, Bytes::from_static(b"answer"));
            replay.finish(stream);
            replay.delivered(stream);
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
        }
        assert!(
            replay.streams.len() <= 65,
            "{} streams",
            replay.streams.len()
        );
        assert!(replay.delivered.len() <= 2 * replay.streams.len() + 64);
        // The newest are still resumable; once their grace is over, none is.
        let newest = StreamName::Post(4_999);
        assert_eq!(
            replay.after(&replay.event_id(newest, 0)).unwrap().1.len(),
            1
        );
        tokio::time::advance(DELIVERED_GRACE).await;
        replay.push(StreamName::Get, Bytes::from_static(b"g"));
        assert_eq!(replay.streams.len(), 1, "only the GET stream is left");
        assert!(replay.delivered.is_empty());
        assert_eq!(replay.kept_bytes(), 1);
    }
}
