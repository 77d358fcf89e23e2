//! The SSE parser for an HTTP upstream's `text/event-stream` responses, after the WHATWG
//! "event stream interpretation" rules: lines end in LF, CRLF or a lone CR (also when the
//! two bytes of a CRLF arrive in different chunks), a leading BOM is skipped, `:` starts a
//! comment, a field without a colon has an empty value, one space after the colon is
//! removed, `data` lines are joined with LF and a blank line dispatches the event.
//!
//! An event's data is handed on as [`Bytes`] that share the received buffer when the event
//! has a single `data` line (a large JSON-RPC result, typically): only joining lines copies.
//! `id` and `retry` are recognised, so they never read as data, and then dropped: the agent
//! neither resumes an upstream stream with `Last-Event-ID` nor takes reconnection delays
//! from its upstreams. Bytes are not decoded: the data is JSON, checked where it is parsed.
//!
//! An event's data can also go on as it arrives ([`SseParser::long_data`]): a result of
//! megabytes then reaches the relay while the upstream is still writing it.
//!
//! Owns no limit: the caller bounds an event's size before feeding it (`EventSizeGuard`),
//! which also bounds the unfinished line this parser holds.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use outpost_tunnel::Reassembly;

/// The UTF-8 byte order mark, skipped at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Event {
    /// The `event` field, empty when the event named none.
    pub(super) event_type: Bytes,
    /// The `data` lines, joined with LF.
    pub(super) data: Bytes,
}

impl Event {
    /// Whether this is a `message` event, the only type that carries MCP messages.
    pub(super) fn is_message(&self) -> bool {
        is_message(&self.event_type)
    }
}

fn is_message(event_type: &[u8]) -> bool {
    event_type.is_empty() || event_type == b"message"
}

/// What [`SseParser::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Item {
    /// A whole event.
    Event(Event),
    /// More of the data of the event going on as it arrives (see [`SseParser::long_data`]).
    Part(Bytes),
    /// The event going on as it arrived has ended; `message`: it was a `message` event
    /// (its type can come after its data).
    Ended { message: bool },
}

/// Whether the event being received goes on as it arrives.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Streaming {
    /// No: its data is gathered and dispatched whole.
    #[default]
    Off,
    /// Its first `data` line is arriving: each byte of it goes on at once.
    Line,
    /// That line has ended: each further `data` line goes on whole as it ends.
    Rest,
}

/// The `data` of the event being received.
#[derive(Debug, Default)]
enum Data {
    /// No `data` line yet: a blank line dispatches nothing.
    #[default]
    None,
    /// One line, shared with the buffer it arrived in.
    One(Bytes),
    /// Several lines, copied together.
    Joined(BytesMut),
}

/// Turns a byte stream, in chunks of any size, into events.
#[derive(Debug)]
pub(super) struct SseParser {
    /// The unfinished line at the end of the chunks so far, as received.
    partial: Reassembly,
    /// The last line ended in a CR at the end of a chunk: an LF next is part of its ending.
    after_cr: bool,
    /// No line has ended yet: the first may start with a BOM.
    at_start: bool,
    event_type: Bytes,
    data: Data,
    streaming: Streaming,
    /// The unfinished line was offered by [`SseParser::long_data`] already.
    offered: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self {
            partial: Reassembly::default(),
            after_cr: false,
            at_start: true,
            event_type: Bytes::new(),
            data: Data::None,
            streaming: Streaming::Off,
            offered: false,
        }
    }
}

impl SseParser {
    /// Takes the next chunk and returns the events it completes, or the parts of the event
    /// going on as it arrives. Jumps from line end to line end with `memchr`; an event
    /// still open when the stream ends is never returned.
    pub(super) fn feed(&mut self, mut chunk: Bytes) -> Vec<Item> {
        let mut items = Vec::new();
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk.advance(1);
            }
        }
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &chunk) {
            self.offered = false;
            let line = if self.streaming == Streaming::Line {
                if at > 0 {
                    items.push(Item::Part(chunk.slice(..at)));
                }
                None
            } else if self.partial.is_empty() {
                Some(chunk.slice(..at))
            } else {
                self.partial.push(chunk.slice(..at));
                Some(self.partial.take())
            };
            let mut end = at + 1;
            if chunk[at] == b'\r' {
                match chunk.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            chunk.advance(end);
            match line {
                Some(line) => self.line(line, &mut items),
                None => self.streaming = Streaming::Rest,
            }
        }
        if !chunk.is_empty() {
            match self.streaming {
                Streaming::Line => items.push(Item::Part(chunk)),
                _ => self.partial.push(chunk),
            }
        }
        items
    }

    /// The data so far of the event being received, when it may be a long message to send
    /// on as it arrives: its first `data` line has reached `from` bytes unfinished, and no
    /// `event` field before it named another type. Offered once per line, and never while
    /// an event goes on; after [`SseParser::stream_data`], the rest of the event comes as
    /// [`Item::Part`]s and an [`Item::Ended`].
    pub(super) fn long_data(&mut self, from: usize) -> Option<Bytes> {
        if self.offered
            || self.partial.len() < from
            || self.streaming != Streaming::Off
            || !matches!(self.data, Data::None)
            || !is_message(&self.event_type)
        {
            return None;
        }
        self.offered = true;
        let mut line = self.partial.take();
        if std::mem::take(&mut self.at_start) && line.starts_with(BOM) {
            line.advance(BOM.len());
        }
        self.partial.push(line.clone());
        let mut value = line.strip_prefix(b"data:").map(|v| line.slice_ref(v))?;
        match value.first() {
            // Whether a space to remove follows the colon is not known yet: offered later.
            None => {
                self.offered = false;
                return None;
            }
            Some(b' ') => value.advance(1),
            Some(_) => {}
        }
        Some(value)
    }

    /// Sends the event whose data [`SseParser::long_data`] gave on as it arrives: its later
    /// bytes come out of [`SseParser::feed`] as parts.
    pub(super) fn stream_data(&mut self) {
        self.partial.take();
        self.streaming = Streaming::Line;
    }

    fn line(&mut self, mut line: Bytes, items: &mut Vec<Item>) {
        if std::mem::take(&mut self.at_start) && line.starts_with(BOM) {
            line.advance(BOM.len());
        }
        if line.is_empty() && self.streaming != Streaming::Off {
            self.streaming = Streaming::Off;
            let event_type = std::mem::take(&mut self.event_type);
            items.push(Item::Ended {
                message: is_message(&event_type),
            });
            return;
        }
        if line.is_empty() {
            let event_type = std::mem::take(&mut self.event_type);
            let data = match std::mem::take(&mut self.data) {
                Data::None => return,
                Data::One(data) => data,
                Data::Joined(data) => data.freeze(),
            };
            items.push(Item::Event(Event { event_type, data }));
            return;
        }
        let (name, value) = match memchr::memchr(b':', &line) {
            Some(0) => return,
            Some(colon) => {
                let mut value = line.slice(colon + 1..);
                if value.first() == Some(&b' ') {
                    value.advance(1);
                }
                (&line[..colon], value)
            }
            None => (&line[..], Bytes::new()),
        };
        match name {
            b"data" if self.streaming == Streaming::Rest => {
                items.push(Item::Part([&b"\n"[..], &value].concat().into()));
            }
            b"data" => self.push_data(value),
            b"event" => self.event_type = value,
            // Recognised and dropped (see the module doc); unknown fields are ignored.
            _ => {}
        }
    }

    fn push_data(&mut self, value: Bytes) {
        self.data = match std::mem::take(&mut self.data) {
            Data::None => Data::One(value),
            Data::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + 1 + value.len());
                joined.put_slice(&first);
                joined.put_u8(b'\n');
                joined.put_slice(&value);
                Data::Joined(joined)
            }
            Data::Joined(mut joined) => {
                joined.put_u8(b'\n');
                joined.put_slice(&value);
                Data::Joined(joined)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::{Event, Item, SseParser};

    /// Parses `stream` fed as the given pieces.
    fn parse_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<(String, String)> {
        parse_streaming(pieces, usize::MAX)
    }

    /// Parses `stream` fed as the given pieces, sending on as it arrives the data of every
    /// event offered once its first line has `from` bytes: such an event is given as its
    /// parts joined, with the type `message`, or `other` if it turned out to be another.
    fn parse_streaming<'a>(
        pieces: impl IntoIterator<Item = &'a [u8]>,
        from: usize,
    ) -> Vec<(String, String)> {
        let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).expect("utf-8");
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let mut streamed: Option<Vec<u8>> = None;
        for piece in pieces {
            for item in parser.feed(Bytes::copy_from_slice(piece)) {
                match item {
                    Item::Event(Event { event_type, data }) => {
                        assert!(streamed.is_none(), "a whole event while one is streamed");
                        events.push((text(&event_type), text(&data)));
                    }
                    Item::Part(part) => streamed.as_mut().expect("streaming").extend(&part),
                    Item::Ended { message } => {
                        let data = streamed.take().expect("streaming");
                        let kind = if message { "message" } else { "other" };
                        events.push((kind.to_owned(), text(&data)));
                    }
                }
            }
            if streamed.is_none()
                && let Some(start) = parser.long_data(from)
            {
                parser.stream_data();
                streamed = Some(start.to_vec());
            }
        }
        events
    }

    fn parse(stream: &str) -> Vec<(String, String)> {
        parse_pieces([stream.as_bytes()])
    }

    fn message(data: &str) -> (String, String) {
        (String::new(), data.to_owned())
    }

    #[test]
    fn a_blank_line_dispatches_the_event() {
        assert_eq!(parse("data: a\n\ndata: b\n"), [message("a")]);
        assert_eq!(
            parse("data: a\n\ndata: b\n\n"),
            [message("a"), message("b")]
        );
    }

    #[test]
    fn every_line_ending_ends_a_line() {
        for ending in ["\n", "\r\n", "\r"] {
            let stream = format!("data: a{ending}data: b{ending}{ending}data: c{ending}{ending}");
            assert_eq!(
                parse(&stream),
                [message("a\nb"), message("c")],
                "{ending:?}"
            );
        }
        assert_eq!(
            parse("data: a\r\rdata: b\n\ndata: c\r\n\r\n"),
            [message("a"), message("b"), message("c")]
        );
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_ending() {
        assert_eq!(
            parse_pieces([&b"data: a\r"[..], b"\ndata: b\r", b"", b"\n\r", b"\n"]),
            [message("a\nb")]
        );
        // A lone CR at the end of a chunk followed by another line.
        assert_eq!(
            parse_pieces([&b"data: a\r"[..], b"data: b\r", b"\r"]),
            [message("a\nb")]
        );
    }

    #[test]
    fn data_lines_are_joined_with_lf() {
        assert_eq!(parse("data: a\ndata:\ndata: c\n\n"), [message("a\n\nc")]);
        assert_eq!(parse("data\n\n"), [message("")], "a field without a colon");
        assert_eq!(parse("data:\ndata\n\n"), [message("\n")]);
    }

    #[test]
    fn one_leading_space_is_removed_from_a_value() {
        assert_eq!(parse("data:a\n\n"), [message("a")]);
        assert_eq!(parse("data: a\n\n"), [message("a")]);
        assert_eq!(parse("data:  a \n\n"), [message(" a ")]);
        assert_eq!(parse("data: a:b: c\n\n"), [message("a:b: c")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        assert_eq!(
            parse(": ping\n:\ndata: a\n: between\nfoo: bar\nData: x\ndata : y\n\n"),
            [message("a")]
        );
        assert_eq!(parse(": only a comment\n\n"), []);
    }

    #[test]
    fn id_and_retry_never_read_as_data() {
        assert_eq!(
            parse("id: 7\nretry: 1000\ndata: a\nid\nretry: x\n\n"),
            [message("a")]
        );
        assert_eq!(parse("id: 7\n\n"), [], "no data, no event");
    }

    #[test]
    fn the_event_type_is_kept_until_dispatch() {
        let events = parse("event: ping\ndata: a\n\ndata: b\n\nevent: message\ndata: c\n\n");
        assert_eq!(
            events,
            [
                ("ping".to_owned(), "a".to_owned()),
                message("b"),
                ("message".to_owned(), "c".to_owned())
            ]
        );
        // An event without data is not dispatched and does not lend its type to the next.
        assert_eq!(parse("event: ping\n\ndata: b\n\n"), [message("b")]);
        let mut parser = SseParser::default();
        let items = parser.feed(Bytes::from_static(b"event: x\ndata: a\n\ndata: b\n\n"));
        let events: Vec<_> = items
            .into_iter()
            .map(|item| match item {
                Item::Event(event) => event,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(!events[0].is_message());
        assert!(events[1].is_message());
    }

    #[test]
    fn a_bom_is_skipped_at_the_start_only() {
        assert_eq!(parse("\u{FEFF}data: a\n\n"), [message("a")]);
        assert_eq!(
            parse_pieces([&b"\xEF"[..], b"\xBB", b"\xBFdata: a\n\n"]),
            [message("a")]
        );
        // Elsewhere it is part of the line: here, an unknown field name.
        assert_eq!(parse("data: a\n\n\u{FEFF}data: b\n\n"), [message("a")]);
    }

    #[test]
    fn one_line_of_data_shares_the_received_buffer() {
        let chunk = Bytes::from(format!("data: {}\n\n", "x".repeat(1000)));
        let start = chunk.as_ptr() as usize;
        let mut parser = SseParser::default();
        let items = parser.feed(chunk.clone());
        let [Item::Event(event)] = &items[..] else {
            panic!("{items:?}");
        };
        assert_eq!(event.data.as_ptr() as usize, start + "data: ".len());
        assert_eq!(event.data.len(), 1000);
    }

    #[test]
    fn a_long_first_data_line_is_offered_once_and_goes_on_as_it_arrives() {
        let mut parser = SseParser::default();
        let sent = parser.feed(Bytes::from_static(b": hi\nid: 3\ndata: {\"jsonrpc\""));
        assert!(sent.is_empty(), "{sent:?}");
        assert_eq!(parser.long_data(100), None, "shorter than asked");
        assert_eq!(&parser.long_data(10).unwrap()[..], b"{\"jsonrpc\"");
        assert_eq!(parser.long_data(10), None, "offered once per line");
        parser.stream_data();
        let items = parser.feed(Bytes::from_static(
            b",\"id\":1}\r\ndata: more\nevent: message",
        ));
        assert_eq!(
            items,
            [
                Item::Part(Bytes::from_static(b",\"id\":1}")),
                Item::Part(Bytes::from_static(b"\nmore")),
            ]
        );
        let items = parser.feed(Bytes::from_static(b"\n\ndata: next\n\n"));
        assert_eq!(items[0], Item::Ended { message: true });
        let Item::Event(next) = &items[1] else {
            panic!("{items:?}");
        };
        assert_eq!(&next.data[..], b"next", "the next event is whole again");
    }

    #[test]
    fn only_a_first_data_line_of_a_possible_message_is_offered() {
        let offered = |stream: &[u8]| {
            let mut parser = SseParser::default();
            parser.feed(Bytes::copy_from_slice(stream));
            parser.long_data(1)
        };
        assert!(offered(b"data: {").is_some());
        assert!(offered(b"event: message\ndata: {").is_some());
        assert!(offered(b"\xEF\xBB\xBFdata: {").is_some(), "after a BOM");
        assert_eq!(offered(b"event: ping\ndata: {"), None, "another type");
        assert_eq!(offered(b"data: a\ndata: {"), None, "a second data line");
        assert_eq!(offered(b": a long comment"), None);
        assert_eq!(offered(b"id: 1234567"), None);
        // Whether a space follows the colon, to be removed, is not known yet.
        let mut parser = SseParser::default();
        parser.feed(Bytes::from_static(b"data:"));
        assert_eq!(parser.long_data(1), None);
        parser.feed(Bytes::from_static(b" {"));
        assert_eq!(&parser.long_data(1).unwrap()[..], b"{");
    }

    #[test]
    fn an_event_whose_type_comes_after_its_data_still_says_so() {
        assert_eq!(
            parse_streaming([&b"data: {\"a\""[..], b":1}\nevent: ping\n\n"], 1),
            [("other".to_owned(), "{\"a\":1}".to_owned())]
        );
    }

    /// A stream with every rule in it, for splitting at every position.
    const SAMPLE: &[u8] = b"\xEF\xBB\xBF: comment\r\nevent: ping\rdata: p\r\r\
        id: 1\nretry: 5\ndata:{\"a\":1}\ndata\ndata:  b\r\n\r\n\
        data: last\r\n\r\n";

    fn sample_events() -> Vec<(String, String)> {
        vec![
            ("ping".to_owned(), "p".to_owned()),
            message("{\"a\":1}\n\n b"),
            message("last"),
        ]
    }

    #[test]
    fn a_sample_stream_split_at_every_position_parses_the_same() {
        assert_eq!(parse_pieces([SAMPLE]), sample_events());
        for at in 0..=SAMPLE.len() {
            let (head, tail) = SAMPLE.split_at(at);
            assert_eq!(parse_pieces([head, tail]), sample_events(), "split at {at}");
        }
        assert_eq!(parse_pieces(SAMPLE.chunks(1)), sample_events());
    }

    proptest! {
        #[test]
        fn any_chunking_parses_the_same(cuts in proptest::collection::vec(0..SAMPLE.len(), 0..8)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(&SAMPLE[from..cut]);
                from = cut;
            }
            pieces.push(&SAMPLE[from..]);
            prop_assert_eq!(parse_pieces(pieces.clone()), sample_events());
            // Sent on as it arrives, an event's parts join to its data: where a cut falls
            // in an event's first data line, that event goes so.
            let streamed: Vec<_> = parse_streaming(pieces, 1)
                .into_iter()
                .map(|(kind, data)| if kind == "message" { (String::new(), data) } else { (kind, data) })
                .collect();
            prop_assert_eq!(streamed, sample_events());
        }
    }
}
