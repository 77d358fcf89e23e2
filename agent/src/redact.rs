//! Secret-echo redaction: every message leaving the agent is searched for the secret
//! values the agent holds (its key, the proxy password, resolved `${env:}`/`${file:}`
//! values, HTTP server headers), raw and as JSON-escaped, percent-encoded, hex and base64
//! text (each base64 alphabet at all three byte alignments, so a secret inside a larger
//! encoded blob is found too). Each match becomes [`MARKER`]. A server that echoes its
//! environment, or a header it received, thus cannot carry a credential off site.
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] are not searched for: replacing every
//! occurrence of a short string would mangle ordinary output. They are named at startup.

use aho_corasick::automaton::Automaton as _;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{AhoCorasick, Anchored, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

/// What a redacted secret is replaced with. Safe inside any JSON string.
pub const MARKER: &str = "[REDACTED:outpost]";
/// Secrets shorter than this are not redacted (and reported as such at startup).
pub const MIN_SECRET_LEN: usize = 8;
/// Encoded forms shorter than this are not searched for (too likely to occur by chance).
const MIN_NEEDLE_LEN: usize = 8;

/// A compiled search for every form of every secret.
pub struct Redactor {
    search: Option<Search>,
    patterns: usize,
}

/// The compiled forms.
struct Search {
    /// Finds them in a message.
    searcher: AhoCorasick,
    /// Tells whether some text is the start of a form (see [`Search::open_from`]); `None`
    /// if it could not be built, and then a stream holds back as much as could begin one.
    starts: Option<NFA>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// Compiles the search. Returns the redactor and the names of secrets too short to
    /// be searched for.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (String, &'a SecretString)>,
    ) -> (Self, Vec<String>) {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut too_short = Vec::new();
        for (name, secret) in secrets {
            let value = secret.expose_secret();
            if value.len() < MIN_SECRET_LEN {
                too_short.push(name);
                continue;
            }
            for form in forms(value) {
                if form.len() >= MIN_NEEDLE_LEN && !needles.contains(&form) {
                    needles.push(form);
                }
            }
        }
        let patterns = needles.len();
        let search = if needles.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&needles)
                .ok()
                .map(|searcher| Search {
                    searcher,
                    // Every pattern's path, for anchored walks: a trie.
                    starts: NFA::builder()
                        .match_kind(MatchKind::Standard)
                        .prefilter(false)
                        .build(&needles)
                        .ok(),
                })
        };
        for needle in &mut needles {
            needle.zeroize();
        }
        (Self { search, patterns }, too_short)
    }

    /// Replaces every secret in `message`; returns it and the number of replacements.
    /// Costs one scan when nothing matches (the common case), and no copy.
    pub fn redact(&self, message: Bytes) -> (Bytes, usize) {
        let Some(Search { searcher, .. }) = &self.search else {
            return (message, 0);
        };
        if searcher.find(message.as_ref()).is_none() {
            return (message, 0);
        }
        let mut count = 0;
        let mut out = Vec::with_capacity(message.len());
        let mut last = 0;
        for found in searcher.find_iter(message.as_ref()) {
            out.extend_from_slice(&message[last..found.start()]);
            out.extend_from_slice(MARKER.as_bytes());
            last = found.end();
            count += 1;
        }
        out.extend_from_slice(&message[last..]);
        (Bytes::from(out), count)
    }

    /// [`Redactor::redact`] for text (log lines).
    pub fn redact_text(&self, text: &str) -> String {
        let (bytes, _) = self.redact(Bytes::copy_from_slice(text.as_bytes()));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Redactor {
    /// Redaction of one message that arrives in parts (see [`RedactStream`]).
    pub fn stream(&self) -> RedactStream<'_> {
        RedactStream {
            search: self.search.as_ref(),
            pending: BytesMut::new(),
            count: 0,
        }
    }
}

impl std::fmt::Debug for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing of the forms: they are the secrets.
        f.debug_struct("Search").finish_non_exhaustive()
    }
}

impl Search {
    /// Where a form could begin that `text` has not yet ended: the first position from
    /// which the rest of `text` is the start of a form, or its length when there is none.
    /// Only the last `longest - 1` positions can be: from further back, the rest is as
    /// long as the longest form, and any form there is wholly in view.
    fn open_from(&self, text: &[u8]) -> usize {
        let window = text
            .len()
            .saturating_sub(self.searcher.max_pattern_len().saturating_sub(1));
        let Some(starts) = &self.starts else {
            return window;
        };
        let Ok(start) = starts.start_state(Anchored::Yes) else {
            return window;
        };
        // An anchored walk dies at the first byte that leaves every form's path: from most
        // positions, at once.
        let begins_a_form = |rest: &[u8]| {
            let mut state = start;
            rest.iter().all(|&byte| {
                state = starts.next_state(Anchored::Yes, state, byte);
                !starts.is_dead(state)
            })
        };
        (window..text.len())
            .find(|&at| begins_a_form(&text[at..]))
            .unwrap_or(text.len())
    }
}

/// Redacts a message part by part, so that its start can be sent on before its end has
/// arrived, with exactly the result of [`Redactor::redact`] over the whole message.
///
/// Each part is searched together with the bytes held back before it. A match that starts
/// before the first place where a form could still be beginning ([`Search::open_from`])
/// is final: every form that could match there is wholly in view. Bytes from that place
/// on are held back until the next part (or the end) decides. Most parts end with nothing
/// that could begin a form; a part taken in a buffer of its own, with nothing held back
/// before it and no secret in it, then goes on uncopied.
pub struct RedactStream<'a> {
    search: Option<&'a Search>,
    /// Arrived and not yet handed on.
    pending: BytesMut,
    /// Replacements so far.
    count: usize,
}

impl std::fmt::Debug for RedactStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // What is held back may be most of a secret: its length only.
        f.debug_struct("RedactStream")
            .field("pending", &self.pending.len())
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RedactStream<'_> {
    /// Takes the next part of the message; returns what can be sent on now, redacted
    /// (possibly nothing).
    pub fn push(&mut self, part: &[u8]) -> Bytes {
        self.pending.extend_from_slice(part);
        let text = self.pending.split().freeze();
        self.hand_on(text, false)
    }

    /// [`RedactStream::push`] for a part in a buffer of its own: when nothing is held back
    /// before it, what it settles goes on as a slice of it rather than a copy.
    pub fn push_owned(&mut self, part: Bytes) -> Bytes {
        if !self.pending.is_empty() {
            return self.push(&part);
        }
        self.hand_on(part, false)
    }

    /// The rest of the message, redacted.
    pub fn finish(&mut self) -> Bytes {
        let text = self.pending.split().freeze();
        self.hand_on(text, true)
    }

    /// Replacements so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Hands on what of `text` (all that is not yet handed on) is settled: all of it at
    /// the message's `end`, else up to where a form could still be beginning.
    fn hand_on(&mut self, text: Bytes, end: bool) -> Bytes {
        let Some(search) = self.search else {
            return text;
        };
        let settled = if end {
            text.len()
        } else {
            search.open_from(&text)
        };
        self.settle(search, text, settled)
    }

    /// Hands on `text` up to `settled`, or to the end of a match that starts before it,
    /// with every match starting before `settled` replaced. The rest is held back: a copy
    /// of fewer bytes than the longest form.
    fn settle(&mut self, search: &Search, text: Bytes, settled: usize) -> Bytes {
        let mut matches = search
            .searcher
            .find_iter(&text[..])
            .take_while(|found| found.start() < settled)
            .peekable();
        let (out, end) = if matches.peek().is_none() {
            (text.slice(..settled), settled)
        } else {
            let mut out = BytesMut::with_capacity(settled + MARKER.len());
            let mut last = 0;
            for found in matches {
                out.extend_from_slice(&text[last..found.start()]);
                out.extend_from_slice(MARKER.as_bytes());
                last = found.end();
                self.count += 1;
            }
            let end = settled.max(last);
            out.extend_from_slice(&text[last..end]);
            (out.freeze(), end)
        };
        self.pending.extend_from_slice(&text[end..]);
        out
    }
}

/// Every form a secret may take in a JSON message.
fn forms(value: &str) -> Vec<Vec<u8>> {
    let bytes = value.as_bytes();
    // Raw, for log lines (in JSON text a secret with quotes or backslashes appears
    // escaped, the next form).
    let mut forms = vec![bytes.to_vec(), json_escaped(value, false).into_bytes()];
    forms.push(json_escaped(value, true).into_bytes());
    forms.push(
        utf8_percent_encode(value, NON_ALPHANUMERIC)
            .to_string()
            .into_bytes(),
    );
    forms.push(
        utf8_percent_encode(value, URI_COMPONENT)
            .to_string()
            .into_bytes(),
    );
    forms.push(
        utf8_percent_encode(value, URI_COMPONENT)
            .to_string()
            .replace("%20", "+")
            .into_bytes(),
    );
    forms.push(hex::encode(bytes).into_bytes());
    forms.push(hex::encode_upper(bytes).into_bytes());
    for engine in [&STANDARD, &URL_SAFE] {
        forms.push(engine.encode(bytes).into_bytes());
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        // At byte offset k in a larger blob, the secret's first encoded characters mix
        // with the bytes before it: skip those, and stop at the last full group.
        for (offset, skip) in [(0usize, 0usize), (1, 2), (2, 3)] {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let full_groups = shifted.len() / 3 * 4;
            let encoded = engine.encode(&shifted);
            if full_groups > skip {
                forms.push(encoded.as_bytes()[skip..full_groups].to_vec());
            }
            shifted.zeroize();
        }
    }
    forms
}

/// The value as it appears between the quotes of a JSON string: as serde_json writes it,
/// or with every non-ASCII character as `\uXXXX` (as ASCII-only encoders write it).
fn json_escaped(value: &str, ascii_only: bool) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    let inner = quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_default();
    if !ascii_only {
        return inner.to_owned();
    }
    let mut out = String::with_capacity(inner.len());
    for c in inner.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Characters a URL component keeps unescaped (RFC 3986 unreserved).
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(secrets: &[&str]) -> Redactor {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        Redactor::new(
            secrets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("s{i}"), s)),
        )
        .0
    }

    fn redacted(r: &Redactor, text: &str) -> (String, usize) {
        let (bytes, n) = r.redact(Bytes::from(text.to_owned()));
        (String::from_utf8(bytes.to_vec()).unwrap(), n)
    }

    #[test]
    fn every_encoding_is_found() {
        let secret = "s3cr3t/t0ken+\"é\"";
        let r = redactor(&[secret]);
        let bytes = secret.as_bytes();
        let mut encodings = vec![
            json_escaped(secret, false),
            json_escaped(secret, true),
            utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string(),
            hex::encode(bytes),
            hex::encode_upper(bytes),
            STANDARD.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
        ];
        // Inside a larger base64 blob, at every alignment.
        for prefix in ["", "a", "ab", "abc"] {
            let blob = STANDARD.encode(format!("{prefix}{secret} and more text after it"));
            encodings.push(blob);
        }
        for encoded in encodings {
            let message = format!(r#"{{"result":{{"text":"x{encoded}y"}}}}"#);
            let (out, n) = redacted(&r, &message);
            assert!(n >= 1, "not found: {encoded}");
            assert!(out.contains(MARKER), "{out}");
            assert!(
                serde_json::from_str::<serde_json::Value>(&out).is_ok(),
                "{out}"
            );
        }
    }

    #[test]
    fn clean_messages_pass_untouched_and_short_secrets_are_named() {
        let secret = SecretString::from("short");
        let long = SecretString::from("long-enough-secret");
        let (r, too_short) = Redactor::new([("a.b".to_owned(), &secret), ("c".to_owned(), &long)]);
        assert_eq!(too_short, vec!["a.b".to_owned()]);
        let message = Bytes::from_static(br#"{"result":"short and sweet"}"#);
        let (out, n) = r.redact(message.clone());
        assert_eq!((out, n), (message, 0));
        let (out, n) = redacted(&r, "long-enough-secret, twice: long-enough-secret");
        assert_eq!(n, 2);
        assert_eq!(out, format!("{MARKER}, twice: {MARKER}"));
    }

    /// Whatever the cut, redacting part by part gives what redacting the whole gives.
    mod streamed {
        use proptest::prelude::*;

        use super::*;

        const SECRETS: [&str; 2] = ["opa_live_Xk3b9QmZ2rT8", "p@ss w\"ord é"];

        /// Messages built from pieces of the secrets' forms and filler, so that matches,
        /// near-matches and overlaps are common.
        fn message() -> impl Strategy<Value = Vec<u8>> {
            let mut words: Vec<Vec<u8>> = SECRETS
                .iter()
                .flat_map(|secret| forms(secret))
                .flat_map(|form| {
                    let half = form.len() / 2;
                    [form.clone(), form[..half].to_vec(), form[half..].to_vec()]
                })
                .collect();
            words.extend([b"x".to_vec(), b"\"".to_vec(), b"op".to_vec(), b"{".to_vec()]);
            proptest::collection::vec(proptest::sample::select(words), 0..24)
                .prop_map(|words| words.concat())
        }

        proptest! {
            #[test]
            fn parts_redact_as_the_whole(
                message in message(),
                cuts in proptest::collection::vec(
                    (any::<prop::sample::Index>(), any::<bool>()),
                    0..8,
                ),
            ) {
                let r = redactor(&SECRETS);
                let (whole, whole_count) = r.redact(Bytes::from(message.clone()));
                let mut at: Vec<(usize, bool)> = cuts
                    .iter()
                    .map(|(i, owned)| (i.index(message.len() + 1), *owned))
                    .collect();
                at.sort_unstable();
                at.push((message.len(), false));
                let message = Bytes::from(message);
                let mut stream = r.stream();
                let mut out = Vec::new();
                let mut from = 0;
                for (cut, owned) in at {
                    // Either way in, by slice or in a buffer of its own.
                    let part = message.slice(from..cut);
                    let ready = if owned {
                        stream.push_owned(part)
                    } else {
                        stream.push(&part)
                    };
                    out.extend_from_slice(&ready);
                    from = cut;
                }
                out.extend_from_slice(&stream.finish());
                let count = stream.count();
                prop_assert_eq!(out, whole.to_vec());
                prop_assert_eq!(count, whole_count);
            }
        }

        #[test]
        fn a_secret_cut_in_two_is_held_back_until_it_is_whole() {
            let r = redactor(&SECRETS);
            let mut stream = r.stream();
            let head = "x".repeat(100);
            let sent = stream.push(format!("{head}opa_live_").as_bytes());
            assert!(
                head.as_bytes().starts_with(&sent),
                "the start of a secret went out: {sent:?}"
            );
            let mut out = sent.to_vec();
            out.extend_from_slice(&stream.push(b"Xk3b9QmZ2rT8 and on"));
            out.extend_from_slice(&stream.finish());
            let count = stream.count();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{head}{MARKER} and on")
            );
            assert_eq!(count, 1);
        }

        #[test]
        fn a_part_that_ends_with_no_start_of_a_secret_goes_on_whole_and_uncopied() {
            let r = redactor(&SECRETS);
            let mut stream = r.stream();
            let part = Bytes::from(format!(r#"{{"text":"{}"}}"#, "x".repeat(1000)));
            let sent = stream.push_owned(part.clone());
            assert_eq!(sent, part);
            assert_eq!(sent.as_ptr(), part.as_ptr(), "the part was copied");
            assert_eq!(stream.finish(), Bytes::new());
        }

        #[test]
        fn only_what_could_begin_a_secret_is_held_back() {
            let r = redactor(&SECRETS);
            let mut stream = r.stream();
            let head = format!(r#"{{"text":"{}"#, "x".repeat(1000));
            let sent = stream.push_owned(Bytes::from(format!("{head}opa_li")));
            assert_eq!(sent, head.as_bytes());
            // Not the start of a secret after all: it goes on with the next part.
            assert_eq!(
                stream.push_owned(Bytes::from_static(b"ke\"}")),
                "opa_like\"}"
            );
            assert_eq!(stream.finish(), Bytes::new());
            assert_eq!(stream.count(), 0);
        }

        #[test]
        fn a_form_begun_at_the_first_place_one_could_still_be_open_is_held_back() {
            let r = redactor(&SECRETS);
            // The longest form (hex) cut one byte before its end: it begins exactly at
            // the first place that can still be open.
            let form = hex::encode(SECRETS[0]);
            let longest = r.search.as_ref().unwrap().searcher.max_pattern_len();
            assert_eq!(form.len(), longest);
            let head = "x".repeat(50);
            let mut stream = r.stream();
            let mut out = stream
                .push_owned(Bytes::from(format!("{head}{}", &form[..longest - 1])))
                .to_vec();
            out.extend_from_slice(&stream.push_owned(Bytes::from(form[longest - 1..].to_owned())));
            out.extend_from_slice(&stream.finish());
            assert_eq!(String::from_utf8(out).unwrap(), format!("{head}{MARKER}"));
            assert_eq!(stream.count(), 1);
        }

        #[test]
        fn without_secrets_every_part_goes_on_at_once() {
            let r = redactor(&[]);
            let mut stream = r.stream();
            assert_eq!(stream.push(b"abc"), "abc");
            assert_eq!(stream.push(b"def"), "def");
            assert_eq!(stream.finish(), Bytes::new());
            assert_eq!(stream.count(), 0);
        }
    }
}
