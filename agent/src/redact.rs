//! Secret-echo redaction: every message leaving the agent is searched for the secret
//! values the agent holds (its key, the proxy password, resolved `${env:}`/`${file:}`
//! values, HTTP server headers), raw and as JSON-escaped, percent-encoded, hex and base64
//! text (each base64 alphabet at all three byte alignments, so a secret inside a larger
//! encoded blob is found too). Each match becomes [`MARKER`]. A server that echoes its
//! environment, or a header it received, thus cannot carry a credential off site.
//!
//! Secrets shorter than [`MIN_SECRET_LEN`] are not searched for: replacing every
//! occurrence of a short string would mangle ordinary output. They are named at startup.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use bytes::Bytes;
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
    searcher: Option<AhoCorasick>,
    patterns: usize,
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
        let searcher = if needles.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&needles)
                .ok()
        };
        for needle in &mut needles {
            needle.zeroize();
        }
        (Self { searcher, patterns }, too_short)
    }

    /// Replaces every secret in `message`; returns it and the number of replacements.
    /// Costs one scan when nothing matches (the common case), and no copy.
    pub fn redact(&self, message: Bytes) -> (Bytes, usize) {
        let Some(searcher) = &self.searcher else {
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
}
