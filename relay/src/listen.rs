//! `subscriptions/listen` (MCP 2026-07-28) where the relay serves it itself: the filter a
//! client asks for, the acknowledgement that says what is honored, the stamping of each
//! notification with the subscription it belongs to, and the listen stream bridged onto a
//! 2025-era upstream (a session of the relay's own, `resources/subscribe` for each asked
//! URI, and the session's server-initiated notifications, filtered). Does not own the
//! pass-through of a listen to a 2026 upstream (`mcp_endpoint.rs`), the merged listen at
//! `/mcp` (`aggregate_listen.rs`), or the per-key cap on listen streams (`guard.rs`).
//!
//! On the wire: the request's params carry `notifications`, a filter of
//! `toolsListChanged`, `promptsListChanged`, `resourcesListChanged` (booleans) and
//! `resourceSubscriptions` (URIs). The stream's first message is
//! `notifications/subscriptions/acknowledged` with the honored filter (the asked one
//! narrowed to what the server can deliver); every notification of the stream carries the
//! listen request's id as `_meta["io.modelcontextprotocol/subscriptionId"]`. The stream
//! ends when the client goes away; a result for the listen request ends it gracefully
//! (relay shutdown), an error when the upstream ends.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::App;
use crate::auth::Principal;
use crate::bridge_legacy::{Refusal, open_legacy_session};
use crate::error::RelayError;
use crate::jsonrpc::{self, Kind};

/// The `_meta` key that ties a notification to its listen request.
pub(crate) const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// How long subscribing to one resource may take upstream.
const SUBSCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a listen request asks for, or honors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    /// `toolsListChanged`
    pub(crate) tools: bool,
    /// `promptsListChanged`
    pub(crate) prompts: bool,
    /// `resourcesListChanged`
    pub(crate) resources: bool,
    /// `resourceSubscriptions`: the resource URIs whose updates are wanted.
    pub(crate) uris: Vec<String>,
}

impl Filter {
    /// Reads `params.notifications`. Unknown fields are ignored (a later revision may add
    /// some); a missing filter or a field of the wrong type is the client's error.
    pub(crate) fn parse(params: &Value) -> Result<Filter, String> {
        let Some(filter) = params.get("notifications").and_then(Value::as_object) else {
            return Err(
                "Invalid params: 'notifications' is required and must be a subscription filter"
                    .into(),
            );
        };
        let flag = |name: &str| match filter.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(on)) => Ok(*on),
            Some(_) => Err(format!(
                "Invalid params: notifications.{name} must be a boolean"
            )),
        };
        let uris = match filter.get("resourceSubscriptions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("Invalid params: notifications.resourceSubscriptions must be URIs")?,
            Some(_) => {
                return Err(
                    "Invalid params: notifications.resourceSubscriptions must be an array".into(),
                );
            }
        };
        Ok(Filter {
            tools: flag("toolsListChanged")?,
            prompts: flag("promptsListChanged")?,
            resources: flag("resourcesListChanged")?,
            uris,
        })
    }

    /// The part of this filter a server with `capabilities` can deliver: a list change only
    /// where it announces `listChanged`, resource updates only with `resources.subscribe`.
    pub(crate) fn narrowed(&self, capabilities: &Value) -> Filter {
        let on = |pointer: &str| capabilities.pointer(pointer) == Some(&Value::Bool(true));
        Filter {
            tools: self.tools && on("/tools/listChanged"),
            prompts: self.prompts && on("/prompts/listChanged"),
            resources: self.resources && on("/resources/listChanged"),
            uris: if on("/resources/subscribe") {
                self.uris.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// The filter as the wire has it: only what is on.
    pub(crate) fn to_json(&self) -> Value {
        let mut filter = serde_json::Map::new();
        for (on, name) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
            (self.resources, "resourcesListChanged"),
        ] {
            if on {
                filter.insert(name.into(), json!(true));
            }
        }
        if !self.uris.is_empty() {
            filter.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(filter)
    }

    /// Whether a server notification (`method`, `params.uri`) is one this filter asks for.
    pub(crate) fn accepts(&self, method: &str, uri: Option<&str>) -> bool {
        match method {
            TOOLS_CHANGED => self.tools,
            PROMPTS_CHANGED => self.prompts,
            RESOURCES_CHANGED => self.resources,
            RESOURCE_UPDATED => uri.is_some_and(|uri| self.uris.iter().any(|u| u == uri)),
            _ => false,
        }
    }
}

/// A notification of `method` with `params`, tied to the listen request `id`.
pub(crate) fn stamped(method: &str, mut params: Value, id: &Value) -> Bytes {
    if !params.is_object() {
        params = json!({});
    }
    let meta = params
        .as_object_mut()
        .map(|p| p.entry("_meta").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        meta.insert(SUBSCRIPTION_ID.into(), id.clone());
    }
    Bytes::from(json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string())
}

/// The stream's first message: what is honored.
pub(crate) fn acknowledgement(honored: &Filter, id: &Value) -> Bytes {
    stamped(
        ACKNOWLEDGED,
        json!({"notifications": honored.to_json()}),
        id,
    )
}

/// The refusal of a listen request whose client cannot read a stream.
pub(crate) fn needs_stream() -> Refusal {
    Refusal::Rpc(
        -32600,
        "subscriptions/listen needs an SSE response: accept text/event-stream".into(),
    )
}

/// The result that ends a listen stream gracefully.
pub(crate) fn closing(id: &Value) -> Value {
    json!({
        "resultType": "complete",
        "_meta": {
            SUBSCRIPTION_ID: id,
            "io.modelcontextprotocol/serverInfo":
                {"name": "outpost", "version": env!("CARGO_PKG_VERSION")},
        },
    })
}

/// A server notification's method and `params`, when `message` is one.
pub(crate) fn notification(message: &[u8]) -> Option<(String, Value)> {
    let Ok(Kind::Notification { method, .. }) = jsonrpc::classify(message) else {
        return None;
    };
    let value: Value = serde_json::from_slice(message).ok()?;
    Some((method, value.get("params").cloned().unwrap_or(Value::Null)))
}

/// Serves a listen request on a 2025-era upstream: a session of the relay's own, a
/// `resources/subscribe` for each asked URI the server can subscribe to, the
/// acknowledgement, then the session's list changes and resource updates the filter asks
/// for, each stamped with `id`, until the client goes away (`tx` closes), the session ends
/// (an error), or the relay shuts down (the graceful result).
pub(crate) async fn bridged(
    app: &Arc<App>,
    principal: &Principal,
    agent: &str,
    server: &str,
    id: &Value,
    params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, Refusal> {
    let filter = Filter::parse(&params).map_err(|text| Refusal::Rpc(-32602, text))?;
    let meta = params.get("_meta").cloned().unwrap_or_else(|| json!({}));
    let (session, one_shot, init) =
        open_legacy_session(app, principal, agent, server, &meta).await?;
    // Before subscribing: an update that follows the subscription at once must find it.
    let mut messages = session.attach_get_stream()?;
    let capabilities = init.get("capabilities").cloned().unwrap_or(Value::Null);
    let mut honored = filter.narrowed(&capabilities);
    let mut subscribed = Vec::new();
    for uri in std::mem::take(&mut honored.uris) {
        let answer = session
            .call(
                "resources/subscribe",
                json!({"uri": uri}),
                SUBSCRIBE_TIMEOUT,
            )
            .await?;
        if answer.get("result").is_some() {
            subscribed.push(uri);
        } else {
            // Left out of the honored filter, which tells the client.
            tracing::debug!(
                agent,
                server,
                "the upstream refused a resource subscription"
            );
        }
    }
    honored.uris = subscribed;
    if tx.send(acknowledgement(&honored, id)).await.is_err() {
        return Ok(closing(id));
    }
    if honored == Filter::default() {
        // Nothing this server can send is asked for: the stream stays open for the client,
        // without holding a session (a stdio process) upstream.
        drop((messages, one_shot));
        tokio::select! {
            _ = tx.closed() => {}
            _ = app.shutdown.cancelled() => {}
        }
        return Ok(closing(id));
    }
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(closing(id)),
            _ = app.shutdown.cancelled() => return Ok(closing(id)),
            message = messages.recv() => {
                let Some(message) = message.map(|outbound| outbound.body) else {
                    return Err(RelayError::SessionClosed.into());
                };
                if let Some((method, params)) = notification(&message) {
                    let uri = params.get("uri").and_then(Value::as_str);
                    if honored.accepts(&method, uri)
                        && tx.send(stamped(&method, params, id)).await.is_err()
                    {
                        return Ok(closing(id));
                    }
                } else if let Ok(Kind::Request { id: asked, method, .. }) =
                    jsonrpc::classify(&message)
                {
                    // Nobody on a listen stream can answer a server's request: a ping gets
                    // its empty result, anything else an error, so the server does not wait.
                    let asked: Value = serde_json::from_str(&asked).unwrap_or(Value::Null);
                    let reply = if method == "ping" {
                        json!({"jsonrpc": "2.0", "id": asked, "result": {}})
                    } else {
                        json!({"jsonrpc": "2.0", "id": asked, "error": {"code": -32601,
                            "message": "a subscriptions/listen stream answers no requests"}})
                    };
                    session.send(Bytes::from(reply.to_string())).await?;
                }
            }
        }
    }
}

pub(crate) const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
pub(crate) const TOOLS_CHANGED: &str = "notifications/tools/list_changed";
pub(crate) const PROMPTS_CHANGED: &str = "notifications/prompts/list_changed";
pub(crate) const RESOURCES_CHANGED: &str = "notifications/resources/list_changed";
pub(crate) const RESOURCE_UPDATED: &str = "notifications/resources/updated";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_narrow_and_stamp() {
        let filter = Filter::parse(&json!({"notifications": {
            "toolsListChanged": true, "promptsListChanged": false,
            "resourceSubscriptions": ["test://a"], "future": 1,
        }}))
        .unwrap();
        assert!(filter.tools && !filter.prompts && !filter.resources);
        assert_eq!(filter.uris, ["test://a"]);
        assert!(Filter::parse(&json!({})).is_err());
        assert!(Filter::parse(&json!({"notifications": {"toolsListChanged": "yes"}})).is_err());
        assert!(Filter::parse(&json!({"notifications": {"resourceSubscriptions": [1]}})).is_err());

        let honored = filter.narrowed(&json!({"tools": {}, "resources": {"subscribe": true}}));
        assert_eq!(
            honored.to_json(),
            json!({"resourceSubscriptions": ["test://a"]})
        );
        assert!(honored.accepts(RESOURCE_UPDATED, Some("test://a")));
        assert!(!honored.accepts(RESOURCE_UPDATED, Some("test://b")));
        assert!(!honored.accepts(TOOLS_CHANGED, None));

        let note: Value = serde_json::from_slice(&stamped(
            RESOURCE_UPDATED,
            json!({"uri": "x"}),
            &json!("l:0"),
        ))
        .unwrap();
        assert_eq!(note["params"]["_meta"][SUBSCRIPTION_ID], "l:0");
        assert_eq!(note["params"]["uri"], "x");
    }
}
