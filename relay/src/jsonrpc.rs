//! The little the relay reads of a JSON-RPC message: its kind, id, method, tool name and
//! progress token. Borrowed parsing, nothing kept but these fields; arguments, results and
//! everything else stay opaque bytes.

use std::borrow::Cow;

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
        /// `params.name` of `tools/call`.
        tool: Option<String>,
        /// `params._meta.progressToken`, as canonical JSON text.
        progress_token: Option<String>,
    },
    /// Has a method and no id.
    Notification {
        /// Method name.
        method: String,
        /// `params.progressToken` of `notifications/progress`.
        progress_token: Option<String>,
        /// `params.requestId` of `notifications/cancelled`, as canonical JSON text.
        cancels: Option<String>,
    },
    /// Has an id and a result or an error.
    Response {
        /// The id, as canonical JSON text.
        id: String,
        /// The error code, if it is an error.
        error_code: Option<i64>,
    },
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
            if e.is_data() {
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

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<Meta<'a>>,
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CallName<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

/// A field that is there, whatever its value, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<Option<IgnoredAny>, D::Error> {
    IgnoredAny::deserialize(field).map(Some)
}

/// Classifies one message (not a batch).
pub(crate) fn classify(message: &[u8]) -> Result<Kind, Invalid> {
    let envelope = Envelope::of(message)?;
    let id = envelope.id.filter(|id| *id != "null").map(str::to_owned);
    let params: Option<Params<'_>> = envelope.params.and_then(|p| serde_json::from_str(p).ok());
    match (envelope.method, id) {
        (Some(method), Some(id)) => {
            // The name on its own: a malformed `_meta` must not hide it (and with it the
            // scope check). A `tools/call` whose name cannot be read is refused upstream.
            let tool = (method == "tools/call")
                .then(|| {
                    envelope
                        .params
                        .and_then(|p| serde_json::from_str::<CallName<'_>>(p).ok())
                        .and_then(|p| p.name)
                        .and_then(|name| serde_json::from_str::<String>(name.get()).ok())
                })
                .flatten();
            let progress_token = params
                .as_ref()
                .and_then(|p| p.meta.as_ref())
                .and_then(|m| m.progress_token)
                .map(|t| t.get().to_owned());
            Ok(Kind::Request {
                id,
                method: method.into_owned(),
                tool,
                progress_token,
            })
        }
        (Some(method), None) => {
            let progress_token = params
                .as_ref()
                .and_then(|p| p.progress_token)
                .map(|t| t.get().to_owned());
            let cancels = (method == "notifications/cancelled")
                .then(|| params.as_ref().and_then(|p| p.request_id))
                .flatten()
                .map(|id| id.get().to_owned());
            Ok(Kind::Notification {
                method: method.into_owned(),
                progress_token,
                cancels,
            })
        }
        (None, Some(id)) if envelope.result || envelope.error.is_some() => Ok(Kind::Response {
            id,
            error_code: envelope.error.map(|e| e.code.unwrap_or(0)),
        }),
        _ => Err(Invalid::NotJsonRpc),
    }
}

/// The target a request names, which MCP 2026-07-28 repeats in the `Mcp-Name` header:
/// `params.name` of `tools/call` and `prompts/get`, `params.uri` of `resources/read`.
/// `None` for other methods, or when the body has no such string.
pub(crate) fn target_name(message: &[u8], method: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Target {
        name: Option<String>,
        uri: Option<String>,
    }
    #[derive(Deserialize)]
    struct WithParams {
        params: Option<Target>,
    }
    let field = match method {
        "tools/call" | "prompts/get" => |t: Target| t.name,
        "resources/read" => |t: Target| t.uri,
        _ => return None,
    };
    serde_json::from_slice::<WithParams>(message)
        .ok()?
        .params
        .and_then(field)
}

/// `params._meta["io.modelcontextprotocol/protocolVersion"]`: the revision a 2026-era
/// request names in its body.
pub(crate) fn meta_protocol_version(message: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct VersionMeta {
        #[serde(rename = "io.modelcontextprotocol/protocolVersion")]
        version: Option<String>,
    }
    #[derive(Deserialize)]
    struct MetaParams {
        #[serde(rename = "_meta")]
        meta: Option<VersionMeta>,
    }
    #[derive(Deserialize)]
    struct WithParams {
        params: Option<MetaParams>,
    }
    serde_json::from_slice::<WithParams>(message)
        .ok()?
        .params?
        .meta?
        .version
}

/// Splits a POST body into single messages: one object, or a non-empty array of them.
pub(crate) fn split_body(body: &[u8]) -> Result<Vec<Box<RawValue>>, Invalid> {
    let first = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(Invalid::NotJson)?;
    if *first == b'[' {
        let messages: Vec<Box<RawValue>> =
            serde_json::from_slice(body).map_err(|_| Invalid::NotJson)?;
        if messages.is_empty() {
            return Err(Invalid::NotJsonRpc);
        }
        Ok(messages)
    } else {
        let message: Box<RawValue> = serde_json::from_slice(body).map_err(|_| Invalid::NotJson)?;
        Ok(vec![message])
    }
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
                tool: Some("echo".into()),
                progress_token: Some("\"p1\"".into()),
            }
        );
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
            }
        );
    }

    #[test]
    fn odd_params_do_not_break_classification() {
        let kind = classify(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1,2]}"#).unwrap();
        assert!(matches!(kind, Kind::Request { tool: None, .. }));
        let kind = classify(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"a":1}}}"#,
        )
        .unwrap();
        assert!(matches!(kind, Kind::Request { tool: None, .. }));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(classify(b"{"), Err(Invalid::NotJson));
        assert_eq!(classify(b"{\"id\":1}"), Err(Invalid::NotJsonRpc));
        assert_eq!(classify(b"[1]"), Err(Invalid::NotJsonRpc));
        assert_eq!(split_body(b"[]").unwrap_err(), Invalid::NotJsonRpc);
        assert_eq!(split_body(b"  ").unwrap_err(), Invalid::NotJson);
        assert_eq!(split_body(br#"[{"a":1},{"b":2}]"#).unwrap().len(), 2);
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
            let mut message = message;
            for (at, kind, byte) in edits {
                if message.is_empty() {
                    break;
                }
                let at = at.index(message.len());
                match kind {
                    0 => message[at] = byte,
                    1 => { message.remove(at); }
                    _ => message.insert(at, byte),
                }
            }
            if let Some(fast) = by_skim(&message) {
                prop_assert_eq!(Some(fast), by_serde(&message), "{}", String::from_utf8_lossy(&message));
            }
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
