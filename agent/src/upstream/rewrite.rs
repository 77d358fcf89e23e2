//! The id rewriting that lets one stdio process serve many streams: each request forwarded
//! to the shared process gets an agent-unique id `o:<n>` (its progress token the same
//! text), so whatever the process sends about it names `n`; the answer and notifications
//! are given the client's own id and token back before they reach the stream that asked.
//! Pure functions on message bytes: only the routing fields are read and replaced, the rest
//! (arguments, results) is carried as raw JSON text.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The agent's number for one request forwarded to a shared process.
pub(super) type Key = u64;

/// Where a message from the shared process belongs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Routing {
    /// The answer to request `Key`.
    Answer(Key),
    /// A notification about request `Key` (progress, a `subscriptions/listen` event, its
    /// cancellation). `ends`: the process gave the request up (`notifications/cancelled`).
    Event { key: Key, ends: bool },
    /// A request of the process's own (canonical JSON id): nobody in the stateless era can
    /// answer it.
    Request(String),
    /// A notification or answer that names no request of the agent's.
    Unrouted,
}

/// A client request rewritten for the shared process, with what it replaced.
#[derive(Debug)]
pub(super) struct Rewritten {
    pub(super) message: Bytes,
    /// The client's id (canonical JSON text).
    pub(super) id: String,
    /// The client's `params._meta.progressToken` (JSON text), if it sent one.
    pub(super) token: Option<String>,
}

/// The key's id on the wire to the process, as canonical JSON text.
pub(super) fn wire_id(key: Key) -> String {
    format!("\"{WIRE_PREFIX}{key}\"")
}

/// Gives request `message` the id `o:<key>`, and its progress token, if any, the same text.
/// `None`: not a JSON object with an id.
pub(super) fn request(message: &[u8], key: Key) -> Option<Rewritten> {
    let mut top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(message).ok()?;
    let id = top.get("id")?.get().to_owned();
    top.insert("id".to_owned(), raw(&wire_id(key))?);
    let mut token = None;
    if let Some(params) = top.get("params")
        && let Ok(mut params) =
            serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(params.get())
        && let Some(meta) = params.get("_meta")
        && let Ok(mut meta) = serde_json::from_str::<serde_json::Map<String, Value>>(meta.get())
        && let Some(progress) = meta.get_mut(PROGRESS_TOKEN)
    {
        token = Some(progress.to_string());
        *progress = Value::String(format!("{WIRE_PREFIX}{key}"));
        params.insert(
            "_meta".to_owned(),
            serde_json::value::to_raw_value(&meta).ok()?,
        );
        top.insert(
            "params".to_owned(),
            serde_json::value::to_raw_value(&params).ok()?,
        );
    }
    Some(Rewritten {
        message: Bytes::from(serde_json::to_vec(&top).ok()?),
        id,
        token,
    })
}

/// A client's `notifications/cancelled` for `key`, in the process's terms.
pub(super) fn cancellation(key: Key, reason: &str) -> Bytes {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": format!("{WIRE_PREFIX}{key}"), "reason": reason },
    });
    Bytes::from(body.to_string())
}

/// The agent's own request `method` to the process, with the era's `_meta` envelope.
pub(super) fn own_request(key: Key, method: &str, version: &str, cursor: Option<&str>) -> Bytes {
    let mut params = serde_json::json!({
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": version,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": { "name": "outpost-agent", "version": env!("CARGO_PKG_VERSION") },
        }
    });
    if let Some(cursor) = cursor {
        params["cursor"] = Value::String(cursor.to_owned());
    }
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": format!("{WIRE_PREFIX}{key}"),
        "method": method,
        "params": params,
    });
    Bytes::from(body.to_string())
}

/// Which request a message from the shared process is about.
pub(super) fn route(message: &[u8]) -> Routing {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        method: Option<String>,
        #[serde(borrow)]
        params: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Params {
        #[serde(rename = "progressToken")]
        progress_token: Option<Value>,
        #[serde(rename = "requestId")]
        request_id: Option<Value>,
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, Value>>,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(message) else {
        return Routing::Unrouted;
    };
    let id = envelope.id.filter(|id| id.get() != "null");
    match (envelope.method, id) {
        (None, Some(id)) => answer_key(id.get()).map_or(Routing::Unrouted, Routing::Answer),
        (Some(_), Some(id)) => Routing::Request(id.get().to_owned()),
        (Some(method), None) => {
            let Some(params) = envelope
                .params
                .and_then(|p| serde_json::from_str::<Params>(p.get()).ok())
            else {
                return Routing::Unrouted;
            };
            let ends = method == "notifications/cancelled";
            let key = if ends {
                params.request_id.as_ref().and_then(key_of)
            } else if method == "notifications/progress" {
                params.progress_token.as_ref().and_then(key_of)
            } else {
                None
            };
            let key = key.or_else(|| {
                params
                    .meta
                    .as_ref()
                    .and_then(|meta| meta.get(SUBSCRIPTION_ID))
                    .and_then(key_of)
            });
            key.map_or(Routing::Unrouted, |key| Routing::Event { key, ends })
        }
        (None, None) => Routing::Unrouted,
    }
}

/// Gives an answer the client's id back.
pub(super) fn restore_answer(message: &[u8], id: &str) -> Option<Bytes> {
    let mut top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(message).ok()?;
    top.insert("id".to_owned(), raw(id)?);
    Some(Bytes::from(serde_json::to_vec(&top).ok()?))
}

/// Gives a notification about request `key` the client's id and progress token back,
/// wherever it names them.
pub(super) fn restore_event(
    message: &[u8],
    key: Key,
    id: &str,
    token: Option<&str>,
) -> Option<Bytes> {
    let mut top: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(message).ok()?;
    let mut params: serde_json::Map<String, Value> =
        serde_json::from_str(top.get("params")?.get()).ok()?;
    let wire = Value::String(format!("{WIRE_PREFIX}{key}"));
    let id: Value = serde_json::from_str(id).ok()?;
    if params.get("progressToken") == Some(&wire)
        && let Some(token) = token.and_then(|t| serde_json::from_str::<Value>(t).ok())
    {
        params.insert("progressToken".to_owned(), token);
    }
    if params.get("requestId") == Some(&wire) {
        params.insert("requestId".to_owned(), id.clone());
    }
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut)
        && meta.get(SUBSCRIPTION_ID) == Some(&wire)
    {
        meta.insert(SUBSCRIPTION_ID.to_owned(), id);
    }
    top.insert(
        "params".to_owned(),
        serde_json::value::to_raw_value(&params).ok()?,
    );
    Some(Bytes::from(serde_json::to_vec(&top).ok()?))
}

/// The request an answer with id `id` (JSON text) is for, if it is one of the agent's.
pub(super) fn answer_key(id: &str) -> Option<Key> {
    key_of(&serde_json::from_str::<Value>(id).ok()?)
}

fn key_of(value: &Value) -> Option<Key> {
    value.as_str()?.strip_prefix(WIRE_PREFIX)?.parse().ok()
}

fn raw(json: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(json.to_owned()).ok()
}

/// The prefix of the ids the agent gives requests to a shared process.
const WIRE_PREFIX: &str = "o:";
const PROGRESS_TOKEN: &str = "progressToken";
/// Where a `subscriptions/listen` notification names its listen request.
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_request_and_its_progress_token_are_renamed_and_restored() {
        let rewritten = request(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"big":[1.50,2]},"_meta":{"progressToken":"p","k":1}}}"#,
            42,
        )
        .unwrap();
        assert_eq!(rewritten.id, "7");
        assert_eq!(rewritten.token.as_deref(), Some("\"p\""));
        let sent = json(&rewritten.message);
        assert_eq!(sent["id"], "o:42");
        assert_eq!(sent["params"]["_meta"]["progressToken"], "o:42");
        assert_eq!(sent["params"]["_meta"]["k"], 1);
        // Arguments travel as the client wrote them.
        assert!(
            std::str::from_utf8(&rewritten.message)
                .unwrap()
                .contains("[1.50,2]")
        );

        let progress = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"o:42","progress":1}}"#;
        assert_eq!(
            route(progress),
            Routing::Event {
                key: 42,
                ends: false
            }
        );
        let back = json(&restore_event(progress, 42, "7", Some("\"p\"")).unwrap());
        assert_eq!(back["params"]["progressToken"], "p");

        let answer = br#"{"jsonrpc":"2.0","id":"o:42","result":{"n":12345678901234567890}}"#;
        assert_eq!(route(answer), Routing::Answer(42));
        let back = restore_answer(answer, "7").unwrap();
        assert_eq!(json(&back)["id"], 7);
        assert!(
            std::str::from_utf8(&back)
                .unwrap()
                .contains("12345678901234567890")
        );
    }

    #[test]
    fn listen_events_and_cancellations_find_their_request() {
        let event = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"o:3"}}}"#;
        assert_eq!(
            route(event),
            Routing::Event {
                key: 3,
                ends: false
            }
        );
        let back = json(&restore_event(event, 3, "\"listen-1\"", None).unwrap());
        assert_eq!(
            back["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            "listen-1"
        );
        let cancelled =
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"o:3"}}"#;
        assert_eq!(route(cancelled), Routing::Event { key: 3, ends: true });
        let back = json(&restore_event(cancelled, 3, "\"listen-1\"", None).unwrap());
        assert_eq!(back["params"]["requestId"], "listen-1");
    }

    #[test]
    fn what_names_no_request_is_unrouted() {
        assert_eq!(
            route(
                br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info"}}"#
            ),
            Routing::Unrouted
        );
        assert_eq!(
            route(br#"{"jsonrpc":"2.0","id":5,"result":{}}"#),
            Routing::Unrouted
        );
        assert_eq!(
            route(br#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#),
            Routing::Request("5".into())
        );
    }
}
