//! The little the relay reads of a JSON-RPC message: its kind, id, method, the name it
//! targets, its progress token and the revision its `_meta` names. One borrowed pass over
//! the message and one over its `params`, nothing kept but these fields; arguments,
//! results and everything else stay opaque bytes.

use std::borrow::Cow;

use bytes::Bytes;

use outpost_protocol::envelope;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// What one message is, as far as routing needs to know.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// Has a method and an id: expects a response.
    Request {
        /// The id, as canonical JSON text (`1` and `"1"` differ).
        id: String,
        /// Method name.
        method: String,
        /// What the request names, when it is a string: `params.name` of `tools/call` and
        /// `prompts/get`, `params.uri` of `resources/read`. The 2026 era repeats it in the
        /// `Mcp-Name` header. See [`Kind::tool`].
        target: Option<String>,
        /// `params._meta.progressToken`, as canonical JSON text.
        progress_token: Option<String>,
        /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
        version: Option<String>,
        /// See [`Kind::unreadable`].
        unreadable: bool,
    },
    /// Has a method and no id.
    Notification {
        /// Method name.
        method: String,
        /// `params.progressToken` of `notifications/progress`.
        progress_token: Option<String>,
        /// `params.requestId` of `notifications/cancelled`, as canonical JSON text.
        cancels: Option<String>,
        /// `params._meta["io.modelcontextprotocol/protocolVersion"]`.
        version: Option<String>,
        /// See [`Kind::unreadable`].
        unreadable: bool,
    },
    /// Has an id and a result or an error.
    Response {
        /// The id, as canonical JSON text.
        id: String,
        /// The error code, if it is an error.
        error_code: Option<i64>,
    },
}

impl Kind {
    /// Whether `params` or its `_meta` is an object the relay could not read: it names a
    /// member routing reads twice (`name`, `uri`, `progressToken`, `requestId`, `_meta`,
    /// the protocol version), which a server may read either copy of, or it has a key that
    /// does not decode (a lone surrogate escape). The relay then reads none of its members:
    /// they read as absent, and whoever checks one of them against a header refuses the
    /// message.
    pub(crate) fn unreadable(&self) -> bool {
        match self {
            Kind::Request { unreadable, .. } | Kind::Notification { unreadable, .. } => *unreadable,
            Kind::Response { .. } => false,
        }
    }

    /// The tool a `tools/call` names.
    pub(crate) fn tool(&self) -> Option<&str> {
        match self {
            Kind::Request { method, target, .. } if method == "tools/call" => target.as_deref(),
            _ => None,
        }
    }
}

/// Why a message is not one the relay can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not JSON at all.
    NotJson,
    /// JSON, but neither request, notification nor response.
    NotJsonRpc,
}

/// The members of a message that routing reads.
struct Envelope<'a> {
    /// Raw JSON text; `null` reads as none.
    id: Option<&'a str>,
    method: Option<Cow<'a, str>>,
    /// Raw JSON text; `null` reads as none.
    params: Option<&'a str>,
    /// Whether there is a result, `null` included: JSON-RPC allows it.
    result: bool,
    error: Option<ErrorObject>,
}

impl<'a> From<Parsed<'a>> for Envelope<'a> {
    fn from(parsed: Parsed<'a>) -> Self {
        Envelope {
            id: parsed.id.map(RawValue::get),
            method: parsed.method,
            params: parsed.params.map(RawValue::get),
            result: parsed.result.is_some(),
            error: parsed.error,
        }
    }
}

impl<'a> Envelope<'a> {
    fn of(message: &'a [u8]) -> Result<Self, Invalid> {
        if message.len() >= envelope::FAST_PATH_FROM
            && let Some(fast) = envelope::members(message).ok().and_then(Self::from_members)
        {
            return Ok(fast);
        }
        let parsed: Parsed<'_> = serde_json::from_slice(message).map_err(|e| {
            // A member of the wrong type may come before a syntax error: only JSON that
            // reads whole is JSON that is not JSON-RPC.
            if e.is_data() && serde_json::from_slice::<IgnoredAny>(message).is_ok() {
                Invalid::NotJsonRpc
            } else {
                Invalid::NotJson
            }
        })?;
        Ok(parsed.into())
    }

    /// The fast path's members as serde_json reads them; `None` where it would refuse one
    /// (serde_json then says why).
    fn from_members(members: envelope::Members<'a>) -> Option<Self> {
        Some(Envelope {
            id: envelope::raw_value(members.id)?,
            method: match members.method {
                Some(text) => serde_json::from_slice(text).ok()?,
                None => None,
            },
            params: envelope::raw_value(members.params)?,
            result: members.result,
            error: match members.error {
                Some(text) => serde_json::from_slice(text).ok()?,
                None => None,
            },
        })
    }
}

/// The envelope as serde_json reads it.
#[derive(Deserialize)]
struct Parsed<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    /// Only whether there is one. Skipped, not kept as raw text: a raw value's text is
    /// checked as UTF-8 apart from the JSON scan, a second pass over what is most of a
    /// large answer. Its JSON is still checked; invalid UTF-8 inside its strings reaches
    /// the client as sent, where a decoder usually replaces it with U+FFFD (refusing the
    /// answer here dropped it and left the call waiting for its timeout). `null` counts:
    /// JSON-RPC allows it.
    #[serde(default, deserialize_with = "present")]
    result: Option<IgnoredAny>,
    error: Option<ErrorObject>,
}

#[derive(Deserialize)]
struct ErrorObject {
    code: Option<i64>,
}

/// The members of `params` that routing reads, each as raw JSON text of any type, so that
/// one of an odd type hides none of the others: a malformed `_meta` must not hide the name
/// (and with it the scope check). Read only from an object (serde would read a struct
/// from an array by position). A member named twice makes the whole `params` unreadable
/// (serde refuses a repeated field): see [`Kind::unreadable`].
#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/protocolVersion")]
    version: Option<&'a RawValue>,
}

/// An object's members that routing reads: `Ok(None)` when `text` is not an object,
/// `Err(Unreadable)` when it is one that names one of them twice or has a key that does
/// not decode. Every member of `T` is a raw value of any type, so nothing else fails: the
/// envelope's pass checked the JSON already.
fn members<'a, T: Deserialize<'a>>(text: Option<&'a str>) -> Result<Option<T>, Unreadable> {
    match text {
        Some(text) if text.starts_with('{') => {
            serde_json::from_str(text).map(Some).map_err(|_| Unreadable)
        }
        _ => Ok(None),
    }
}

/// An object the relay could not read (see [`Kind::unreadable`]).
struct Unreadable;

/// A raw value's text, if it is a JSON string.
fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str(raw?.get()).ok()
}

/// A raw value's canonical text.
fn text(raw: Option<&RawValue>) -> Option<String> {
    raw.map(|raw| raw.get().to_owned())
}

/// A field that is there, whatever its value, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<Option<IgnoredAny>, D::Error> {
    IgnoredAny::deserialize(field).map(Some)
}

/// Classifies one message (not a batch).
pub(crate) fn classify(message: &[u8]) -> Result<Kind, Invalid> {
    let envelope = Envelope::of(message)?;
    let id = envelope.id.filter(|id| *id != "null").map(str::to_owned);
    let params = members::<Params<'_>>(envelope.params);
    let meta = match &params {
        Ok(Some(params)) => members::<Meta<'_>>(params.meta.map(RawValue::get)),
        _ => Ok(None),
    };
    let unreadable = params.is_err() || meta.is_err();
    let (params, meta) = (params.ok().flatten(), meta.ok().flatten());
    let version = string(meta.as_ref().and_then(|m| m.version));
    match (envelope.method, id) {
        (Some(method), Some(id)) => {
            let target = params.as_ref().and_then(|p| match method.as_ref() {
                "tools/call" | "prompts/get" => string(p.name),
                "resources/read" => string(p.uri),
                _ => None,
            });
            Ok(Kind::Request {
                id,
                method: method.into_owned(),
                target,
                progress_token: text(meta.and_then(|m| m.progress_token)),
                version,
                unreadable,
            })
        }
        (Some(method), None) => {
            let params = params.as_ref();
            let cancels = (method == "notifications/cancelled")
                .then(|| text(params.and_then(|p| p.request_id)))
                .flatten();
            Ok(Kind::Notification {
                method: method.into_owned(),
                progress_token: text(params.and_then(|p| p.progress_token)),
                cancels,
                version,
                unreadable,
            })
        }
        (None, Some(id)) if envelope.result || envelope.error.is_some() => Ok(Kind::Response {
            id,
            error_code: envelope.error.map(|e| e.code.unwrap_or(0)),
        }),
        _ => Err(Invalid::NotJsonRpc),
    }
}

/// Splits a POST body into single messages: one object, or a non-empty array of them.
/// A lone message is the body itself without the whitespace around it, checked only as
/// UTF-8 here: [`classify`] reads all of it and refuses what is not JSON.
pub(crate) fn split_body(body: &Bytes) -> Result<Vec<Bytes>, Invalid> {
    let start = body
        .iter()
        .position(|b| !is_json_whitespace(*b))
        .ok_or(Invalid::NotJson)?;
    if body[start] == b'[' {
        let messages: Vec<Box<RawValue>> =
            serde_json::from_slice(body).map_err(|_| Invalid::NotJson)?;
        if messages.is_empty() {
            return Err(Invalid::NotJsonRpc);
        }
        return Ok(messages
            .iter()
            .map(|message| Bytes::copy_from_slice(message.get().as_bytes()))
            .collect());
    }
    let end = body
        .iter()
        .rposition(|b| !is_json_whitespace(*b))
        .map_or(start, |last| last + 1);
    std::str::from_utf8(&body[start..end]).map_err(|_| Invalid::NotJson)?;
    Ok(vec![body.slice(start..end)])
}

/// JSON's whitespace: narrower than ASCII's, which has form feed.
fn is_json_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn requests_expose_method_tool_and_progress_token_only() {
        let kind = classify(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"secret"},"_meta":{"progressToken":"p1"}}}"#,
        )
        .unwrap();
        assert_eq!(
            kind,
            Kind::Request {
                id: "7".into(),
                method: "tools/call".into(),
                target: Some("echo".into()),
                progress_token: Some("\"p1\"".into()),
                version: None,
                unreadable: false,
            }
        );
        assert_eq!(kind.tool(), Some("echo"));
    }

    #[test]
    fn requests_expose_the_target_and_revision_the_2026_headers_repeat() {
        let meta =
            r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":1}"#;
        for (method, member, target) in [
            ("tools/call", "name", Some("echo")),
            ("prompts/get", "name", Some("greet")),
            ("resources/read", "uri", Some("file:///a")),
            ("resources/read", "name", None),
            ("tools/list", "name", None),
        ] {
            let value = target.unwrap_or("x");
            let message = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"{member}":"{value}",{meta}}}}}"#
            );
            let Ok(Kind::Request {
                target: read,
                version,
                progress_token,
                ..
            }) = classify(message.as_bytes())
            else {
                panic!("not a request: {message}");
            };
            assert_eq!(read.as_deref(), target, "{message}");
            assert_eq!(version.as_deref(), Some("2026-07-28"), "{message}");
            assert_eq!(progress_token.as_deref(), Some("1"), "{message}");
        }
        let note = classify(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#,
        )
        .unwrap();
        assert!(matches!(note, Kind::Notification { version: Some(v), .. } if v == "2026-07-28"));
    }

    #[test]
    fn string_and_number_ids_stay_distinct() {
        let a = classify(br#"{"jsonrpc":"2.0","id":"1","result":{}}"#).unwrap();
        let b = classify(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn notifications_and_errors_are_recognised() {
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":3,"progress":1}}"#).unwrap(),
            Kind::Notification {
                method: "notifications/progress".into(),
                progress_token: Some("3".into()),
                cancels: None,
                version: None,
                unreadable: false,
            }
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"x"}}"#).unwrap(),
            Kind::Response {
                id: "2".into(),
                error_code: Some(-32601)
            }
        );
    }

    #[test]
    fn cancellations_name_their_request() {
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"r1","reason":"x"}}"#).unwrap(),
            Kind::Notification {
                method: "notifications/cancelled".into(),
                progress_token: None,
                cancels: Some("\"r1\"".into()),
                version: None,
                unreadable: false,
            }
        );
    }

    #[test]
    fn odd_params_do_not_break_classification() {
        let kind = classify(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1,2]}"#).unwrap();
        assert!(matches!(kind, Kind::Request { target: None, .. }));
        let kind = classify(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"a":1}}}"#,
        )
        .unwrap();
        assert_eq!(kind.tool(), None);
        // A malformed `_meta` hides neither the name nor itself breaks the message.
        for meta in [
            r#""x""#,
            "[1]",
            r#"{"progressToken":1,"progressToken":2}"#,
            r#"{"io.modelcontextprotocol/protocolVersion":7}"#,
        ] {
            let message = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","_meta":{meta}}}}}"#
            );
            let kind = classify(message.as_bytes()).unwrap();
            assert_eq!(kind.tool(), Some("echo"), "{message}");
            assert!(
                matches!(kind, Kind::Request { version: None, .. }),
                "{message}"
            );
            assert_eq!(
                kind.unreadable(),
                meta.contains("1,\"progressToken"),
                "{message}"
            );
        }
        // Members are read from an object only: serde would read them from an array by
        // position.
        let kind = classify(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo",null,null,null,null]}"#,
        )
        .unwrap();
        assert_eq!(kind.tool(), None);
        assert!(!kind.unreadable());
    }

    /// A repeated member beside the one a header repeats hides it: the message says so,
    /// rather than reading as if it had none.
    #[test]
    fn a_repeated_sibling_marks_the_message() {
        let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2025-06-18"}"#;
        for params in [
            r#"{"name":"secret","progressToken":1,"progressToken":2}"#.to_owned(),
            format!(r#"{{"name":"secret",{meta},{meta}}}"#),
            r#"{"name":"secret","_meta":{"progressToken":1,"progressToken":1,"io.modelcontextprotocol/protocolVersion":"2025-06-18"}}"#.to_owned(),
            // A key that does not decode hides the members beside it too.
            r#"{"name":"secret","\udc00":1}"#.to_owned(),
        ] {
            for message in [
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{params}}}"#),
                format!(r#"{{"jsonrpc":"2.0","method":"notifications/x","params":{params}}}"#),
            ] {
                let kind = classify(message.as_bytes()).unwrap();
                assert!(kind.unreadable(), "{message}");
                assert!(
                    matches!(
                        kind,
                        Kind::Request { version: None, .. } | Kind::Notification { version: None, .. }
                    ),
                    "{message}"
                );
            }
        }
    }

    /// A server may read either copy of a repeated member: the relay reads neither, and a
    /// `tools/call` without a readable name is refused before it goes anywhere.
    #[test]
    fn a_repeated_name_is_no_name() {
        for params in [
            r#"{"name":"allowed","name":"other"}"#,
            r#"{"name":"allowed","n\u0061me":"other"}"#,
        ] {
            let message =
                format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
            assert_eq!(
                classify(message.as_bytes()).unwrap().tool(),
                None,
                "{message}"
            );
        }
    }

    #[test]
    fn a_lone_message_is_the_body_without_the_whitespace_around_it() {
        let body = Bytes::from_static(b" \n{\"jsonrpc\":\"2.0\",\n \"id\":1}\r\n ");
        assert_eq!(
            split_body(&body).unwrap(),
            vec![Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\n \"id\":1}")]
        );
        // Not UTF-8, even where classification would skip the bytes.
        let body = Bytes::from_static(b"{\"jsonrpc\":\"2.0\",\"x\":\"\xff\"}");
        assert_eq!(split_body(&body).unwrap_err(), Invalid::NotJson);
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(classify(b"{"), Err(Invalid::NotJson));
        assert_eq!(classify(b"{\"id\":1}"), Err(Invalid::NotJsonRpc));
        assert_eq!(classify(b"[1]"), Err(Invalid::NotJsonRpc));
        assert_eq!(
            classify(b"{\"id\":1,\"result\":{}} x"),
            Err(Invalid::NotJson)
        );
        // A member of the wrong type before broken syntax: still not JSON.
        assert_eq!(classify(b"{\"id\":1,\"method\":5,"), Err(Invalid::NotJson));
        assert_eq!(
            classify(b"{\"id\":1,\"method\":5}"),
            Err(Invalid::NotJsonRpc)
        );
        let split = |body: &'static [u8]| split_body(&Bytes::from_static(body));
        assert_eq!(split(b"[]").unwrap_err(), Invalid::NotJsonRpc);
        assert_eq!(split(b"  ").unwrap_err(), Invalid::NotJson);
        // Form feed is ASCII whitespace, not JSON's: the message keeps it, and classify
        // refuses it.
        assert_eq!(
            split(b"\x0c{\"a\":1}").unwrap(),
            [Bytes::from_static(b"\x0c{\"a\":1}")]
        );
        assert_eq!(
            classify(b"\x0c{\"id\":1,\"result\":{}}"),
            Err(Invalid::NotJson)
        );
        assert_eq!(split(b"[{\"a\":1} x").unwrap_err(), Invalid::NotJson);
        assert_eq!(
            split(br#" [{"a":1}, {"b":2}] "#).unwrap(),
            [&br#"{"a":1}"#[..], br#"{"b":2}"#]
        );
    }

    #[test]
    fn a_result_is_checked_as_json_but_not_kept() {
        let ok =
            br#"{"jsonrpc":"2.0","id":"r","result":{"content":[{"type":"text","text":"a\"b"}]}}"#;
        assert_eq!(
            classify(ok).unwrap(),
            Kind::Response {
                id: "\"r\"".into(),
                error_code: None
            }
        );
        // Broken JSON inside a result is still refused.
        for broken in [
            &br#"{"jsonrpc":"2.0","id":1,"result":{"a":tru}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"result":{"a":"\q"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":["#,
        ] {
            assert_eq!(classify(broken), Err(Invalid::NotJson));
        }
        // A null result is a result.
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":1,"result":null}"#),
            Ok(Kind::Response {
                id: "1".into(),
                error_code: None
            })
        );
    }

    /// The envelope as a comparable value.
    type Read = (
        Option<String>,
        Option<String>,
        Option<String>,
        bool,
        Option<Option<i64>>,
    );

    fn read(envelope: Envelope<'_>) -> Read {
        (
            envelope.id.map(str::to_owned),
            envelope.method.map(Cow::into_owned),
            envelope.params.map(str::to_owned),
            envelope.result,
            envelope.error.map(|e| e.code),
        )
    }

    fn by_serde(message: &[u8]) -> Option<Read> {
        let parsed: Parsed<'_> = serde_json::from_slice(message).ok()?;
        Some(read(parsed.into()))
    }

    fn by_skim(message: &[u8]) -> Option<Read> {
        envelope::members(message)
            .ok()
            .and_then(Envelope::from_members)
            .map(read)
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            r#"[a-z\\"\n\t\x00-\x1fé😀]{0,12}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(r#"[a-z"\\é]{0,6}"#, inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// `message` with `edits` made: at an index, a byte replaced (kind 0), removed (1),
    /// inserted (2), or the message cut there (3).
    fn damaged(mut message: Vec<u8>, edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
        for (at, kind, byte) in edits {
            if message.is_empty() {
                break;
            }
            let at = at.index(message.len());
            match kind {
                0 => message[at] = byte,
                1 => {
                    message.remove(at);
                }
                2 => message.insert(at, byte),
                _ => message.truncate(at),
            }
        }
        message
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        let member =
            |name: &'static str| proptest::option::of(json_value()).prop_map(move |v| (name, v));
        (
            member("id"),
            member("method"),
            member("params"),
            member("result"),
            member("error"),
            member("jsonrpc"),
            member("x"),
            any::<bool>(),
        )
            .prop_map(|(a, b, c, d, e, f, g, pretty)| {
                let mut object = serde_json::Map::new();
                for (name, value) in [a, b, c, d, e, f, g] {
                    if let Some(value) = value {
                        object.insert(name.to_owned(), value);
                    }
                }
                let value = serde_json::Value::Object(object);
                if pretty {
                    serde_json::to_vec_pretty(&value).unwrap()
                } else {
                    serde_json::to_vec(&value).unwrap()
                }
            })
    }

    proptest! {
        /// Of well-formed JSON, the fast path reads what serde_json reads, and refuses what
        /// it refuses (a member of the wrong type).
        #[test]
        fn the_fast_path_reads_what_serde_json_reads(message in message()) {
            prop_assert_eq!(by_skim(&message), by_serde(&message), "{}", String::from_utf8_lossy(&message));
        }

        /// Whatever the fast path accepts of a damaged message, serde_json accepts too and
        /// reads the same.
        #[test]
        fn the_fast_path_accepts_nothing_serde_json_refuses(
            message in message(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(&b"\"\\{}[],:0-.eE+ u\x01\x7fn\xff"[..])), 1..4),
        ) {
            let message = damaged(message, edits);
            if let Some(fast) = by_skim(&message) {
                prop_assert_eq!(Some(fast), by_serde(&message), "{}", String::from_utf8_lossy(&message));
            }
        }

        /// JSON checked part by part (`envelope::Syntax`, for an answer the relay sends on
        /// as it arrives) accepts exactly what serde_json accepts, wherever the text is cut,
        /// damaged or not.
        #[test]
        fn syntax_checked_in_parts_agrees_with_serde_json(
            message in prop_oneof![message(), json_value().prop_map(|v| serde_json::to_vec(&v).unwrap())],
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, prop::sample::select(&b"\"\\{}[],:0123-.eE+ u\x01\x7fntrufalse\xff"[..])), 0..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let message = damaged(message, edits);
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(message.len() + 1)).collect();
            cuts.sort_unstable();
            let mut syntax = envelope::Syntax::default();
            let mut checked = Ok(());
            let mut from = 0;
            for cut in cuts.into_iter().chain([message.len()]) {
                checked = checked.and_then(|()| syntax.push(&message[from..cut]));
                from = cut;
            }
            let checked = checked.and_then(|()| syntax.finish()).is_ok();
            let serde = serde_json::from_slice::<serde::de::IgnoredAny>(&message).is_ok();
            prop_assert_eq!(checked, serde, "{}", String::from_utf8_lossy(&message));
        }

        /// An agent abandons a message already begun by making its last byte NUL
        /// (`MessageWriter::abandon`): whatever was sent before, classification refuses it,
        /// so the relay drops it. Large messages take the fast path.
        #[test]
        fn a_message_ending_in_nul_is_refused(
            message in message(),
            large in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut message = message;
            if large {
                let text = "x".repeat(envelope::FAST_PATH_FROM);
                message = format!(r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{text}"}}],"more":{}}}}}"#, String::from_utf8_lossy(&message)).into_bytes();
            }
            let len = 1 + cut.index(message.len());
            let mut spoiled = message[..len].to_vec();
            spoiled[len - 1] = 0;
            prop_assert!(classify(&spoiled).is_err(), "{}", String::from_utf8_lossy(&spoiled));
        }
    }
}
