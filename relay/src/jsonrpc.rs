//! The little the relay reads of a JSON-RPC message: its kind, id, method, tool name and
//! progress token. Borrowed parsing, nothing kept but these fields; arguments, results and
//! everything else stay opaque bytes.

use std::borrow::Cow;

use serde::Deserialize;
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

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
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

/// Classifies one message (not a batch).
pub(crate) fn classify(message: &[u8]) -> Result<Kind, Invalid> {
    let envelope: Envelope<'_> = serde_json::from_slice(message).map_err(|e| {
        if e.is_data() {
            Invalid::NotJsonRpc
        } else {
            Invalid::NotJson
        }
    })?;
    let id = envelope
        .id
        .filter(|id| id.get() != "null")
        .map(|id| id.get().to_owned());
    let params: Option<Params<'_>> = envelope
        .params
        .and_then(|p| serde_json::from_str(p.get()).ok());
    match (envelope.method, id) {
        (Some(method), Some(id)) => {
            // The name on its own: a malformed `_meta` must not hide it (and with it the
            // scope check). A `tools/call` whose name cannot be read is refused upstream.
            let tool = (method == "tools/call")
                .then(|| {
                    envelope
                        .params
                        .and_then(|p| serde_json::from_str::<CallName<'_>>(p.get()).ok())
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
        (None, Some(id)) if envelope.result.is_some() || envelope.error.is_some() => {
            Ok(Kind::Response {
                id,
                error_code: envelope.error.map(|e| e.code.unwrap_or(0)),
            })
        }
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
}
