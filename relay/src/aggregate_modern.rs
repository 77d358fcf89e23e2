//! `/mcp` for clients of the stateless 2026 era: the same servers, names and routing as
//! the 2025-era aggregate (`aggregate.rs`), with no session. Each request is answered from
//! the upstreams it concerns, each reached statelessly whatever its era (passed through to
//! a 2026 server, bridged to a 2025 one, `bridge_legacy.rs`). Multi Round-Trip Requests
//! pass through: the retry names the same tool, so it is routed to the same upstream.
//! `subscriptions/listen` is served by `aggregate_listen.rs`.

use std::sync::Arc;

use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::App;
use crate::aggregate::{Named, find_prefixed, find_wrapped, prefix_of, prefixed, targets, wrap};
use crate::auth::Principal;
use crate::bridge_legacy::{answer_message, call_any_era};
use crate::error::{CorrelationId, RelayError};
use crate::mcp_endpoint::{self as endpoint, LISTEN_METHOD};

/// Pages of one list followed per upstream.
const MAX_PAGES: usize = 50;

/// One reachable server and the prefix of its names.
#[derive(Debug, Clone)]
struct Target {
    agent: String,
    server: String,
    prefix: String,
}

impl Named for Target {
    fn agent(&self) -> &str {
        &self.agent
    }
    fn server(&self) -> &str {
        &self.server
    }
    fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Serves one stateless request (already checked against its headers) at `/mcp`.
pub(crate) async fn handle(
    app: &Arc<App>,
    principal: Principal,
    raw: &Bytes,
    streaming: bool,
) -> Response {
    let message: Value = serde_json::from_slice(raw).unwrap_or_default();
    let Some(client_id) = message.get("id").cloned() else {
        // Notifications reach no upstream without a request to tie them to.
        return axum::response::IntoResponse::into_response(http::StatusCode::ACCEPTED);
    };
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let params = message.get("params").cloned().unwrap_or_else(|| json!({}));
    if method == LISTEN_METHOD {
        return listen(app, principal, client_id, params, streaming).await;
    }
    let (tx, rx) = mpsc::channel(64);
    let app_task = app.clone();
    app.tasks.spawn(async move {
        let app = app_task;
        let answer = serve(&app, &principal, &method, params, &tx).await;
        let message = match answer {
            Ok(mut answer) => {
                answer["id"] = client_id;
                answer
            }
            Err(err) => {
                let correlation = CorrelationId::new();
                err.log(&correlation, &"aggregated stateless request");
                err.to_jsonrpc(Some(&client_id), &correlation)
            }
        };
        let _ = tx.send(Bytes::from(message.to_string())).await;
    });
    endpoint::stateless_answer(app, rx, streaming).await
}

/// A listen stream at `/mcp` (`aggregate_listen.rs`), under the key's cap on listen
/// streams rather than its in-flight calls.
async fn listen(
    app: &Arc<App>,
    principal: Principal,
    client_id: Value,
    params: Value,
    streaming: bool,
) -> Response {
    let slot = match app.guard.admit_listen(&principal.key_id.0) {
        Ok(slot) => slot,
        Err(limited) => {
            return endpoint::refuse_requests(
                &endpoint::limited_error(app, &limited),
                &[client_id],
                &CorrelationId::new(),
            );
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let app_task = app.clone();
    app.tasks.spawn(async move {
        let app = app_task;
        let _slot = slot;
        let answer = if streaming {
            let targets = || current_targets(&app, &principal);
            crate::aggregate_listen::serve(&app, &principal, targets, &client_id, params, &tx).await
        } else {
            Err(crate::listen::needs_stream())
        };
        let message = answer_message(&client_id, LISTEN_METHOD, answer);
        let _ = tx.send(Bytes::from(message.to_string())).await;
    });
    endpoint::stateless_answer(app, rx, streaming).await
}

fn current_targets(app: &App, principal: &Principal) -> Vec<Target> {
    let pairs = targets(app, principal);
    pairs
        .iter()
        .map(|(agent, server)| {
            let repeated = pairs.iter().filter(|(_, s)| s == server).count() > 1;
            Target {
                agent: agent.clone(),
                server: server.clone(),
                prefix: prefix_of(agent, server, repeated),
            }
        })
        .collect()
}

fn result(result: Value) -> Value {
    json!({"jsonrpc": "2.0", "result": result})
}

fn error(code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}})
}

async fn serve(
    app: &Arc<App>,
    principal: &Principal,
    method: &str,
    mut params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, RelayError> {
    let targets = current_targets(app, principal);
    match method {
        "server/discover" => Ok(discover(app, principal, &targets, params, tx).await),
        "tools/list" => Ok(list(app, principal, &targets, "tools", params, tx).await),
        "prompts/list" => Ok(list(app, principal, &targets, "prompts", params, tx).await),
        "resources/list" => Ok(list(app, principal, &targets, "resources", params, tx).await),
        "resources/templates/list" => {
            Ok(list(app, principal, &targets, "resourceTemplates", params, tx).await)
        }
        "tools/call" | "prompts/get" | "resources/read" | "completion/complete" => {
            let routed = match method {
                "tools/call" | "prompts/get" => find_prefixed(&targets, &mut params, "/name"),
                "resources/read" => find_wrapped(&targets, &mut params, "/uri"),
                _ => match params.pointer("/ref/type").and_then(Value::as_str) {
                    Some("ref/prompt") => find_prefixed(&targets, &mut params, "/ref/name"),
                    Some("ref/resource") => find_wrapped(&targets, &mut params, "/ref/uri"),
                    _ => None,
                },
            };
            let Some(target) = routed else {
                return Ok(error(-32602, "no reachable server has that name or URI"));
            };
            if method == "tools/call" {
                let tool = params.get("name").and_then(Value::as_str).unwrap_or("");
                if !principal.scope.allows_tool(tool) {
                    return Err(RelayError::InsufficientScope("tool"));
                }
                app.guard
                    .admit_tool(&principal.key_id.0, tool)
                    .map_err(|limited| endpoint::limited_error(app, &limited))?;
            }
            // As on `/mcp/{agent}/{server}`: the call holds an in-flight slot of the key and
            // of the agent until it is answered.
            let _slot = app
                .guard
                .admit_call(&principal.key_id.0, &principal.org_id, &target.agent)
                .map_err(|limited| endpoint::limited_error(app, &limited))?;
            let mut answer = call_any_era(
                app,
                principal,
                &target.agent,
                &target.server,
                method,
                params,
                tx,
            )
            .await?;
            if method == "resources/read"
                && let Some(contents) = answer
                    .pointer_mut("/result/contents")
                    .and_then(Value::as_array_mut)
            {
                for content in contents {
                    if let Some(uri) = content.get("uri").and_then(Value::as_str) {
                        content["uri"] = json!(wrap_target(&target, uri));
                    }
                }
            }
            Ok(answer)
        }
        _ => Ok(error(-32601, &format!("Method not found: {method}"))),
    }
}

/// Discovers every upstream and merges what they can do (only what some upstream has).
async fn discover(
    app: &Arc<App>,
    principal: &Principal,
    targets: &[Target],
    params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Value {
    let answers = futures_util::future::join_all(targets.iter().map(|t| {
        call_any_era(
            app,
            principal,
            &t.agent,
            &t.server,
            "server/discover",
            params.clone(),
            tx,
        )
    }))
    .await;
    let capabilities: Vec<Value> = answers
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|a| a.pointer("/result/capabilities").cloned())
        .collect();
    let has = |name: &str| capabilities.iter().any(|c| c.get(name).is_some());
    let mut merged = serde_json::Map::new();
    for name in ["tools", "prompts", "resources"] {
        if has(name) {
            // The relay itself tells a listening client when the reachable servers change,
            // and passes on the upstreams' own list changes.
            merged.insert(name.to_owned(), json!({"listChanged": true}));
        }
    }
    if capabilities
        .iter()
        .any(|c| c.pointer("/resources/subscribe") == Some(&json!(true)))
        && let Some(resources) = merged.get_mut("resources")
    {
        resources["subscribe"] = json!(true);
    }
    if has("completions") {
        merged.insert("completions".to_owned(), json!({}));
    }
    result(json!({
        "resultType": "complete",
        "supportedVersions": [endpoint::STATELESS_PROTOCOL_VERSIONS[0]],
        "capabilities": merged,
        "instructions": "Tools and prompts are named SERVER__NAME (AGENT__SERVER__NAME when two \
            agents have a server of that name); resource URIs are outpost://AGENT/SERVER/URI.",
        "_meta": {"io.modelcontextprotocol/serverInfo":
            {"name": "outpost", "version": env!("CARGO_PKG_VERSION")}},
    }))
}

/// Fans a list out to every upstream, follows cursors, renames and merges in (agent,
/// server) order. One page: the client's cursor is not used.
async fn list(
    app: &Arc<App>,
    principal: &Principal,
    targets: &[Target],
    field: &str,
    mut params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Value {
    let method = match field {
        "resourceTemplates" => "resources/templates/list".to_owned(),
        other => format!("{other}/list"),
    };
    if let Some(object) = params.as_object_mut() {
        object.remove("cursor");
    }
    let pages = futures_util::future::join_all(targets.iter().map(|target| {
        let (method, params) = (method.clone(), params.clone());
        async move {
            let mut items = Vec::new();
            let mut cursor: Option<Value> = None;
            for _ in 0..MAX_PAGES {
                let mut params = params.clone();
                if let (Some(cursor), Some(object)) = (&cursor, params.as_object_mut()) {
                    object.insert("cursor".into(), cursor.clone());
                }
                let answer = call_any_era(
                    app,
                    principal,
                    &target.agent,
                    &target.server,
                    &method,
                    params,
                    tx,
                )
                .await;
                let Some(page) = answer.ok().and_then(|a| a.get("result").cloned()) else {
                    break;
                };
                if let Some(list) = page.get(field).and_then(Value::as_array) {
                    items.extend(list.iter().cloned());
                }
                cursor = page.get("nextCursor").filter(|c| !c.is_null()).cloned();
                if cursor.is_none() {
                    break;
                }
            }
            items
        }
    }))
    .await;
    let mut merged = Vec::new();
    for (target, items) in targets.iter().zip(pages) {
        for mut item in items {
            let renamed = match field {
                "tools" | "prompts" => item
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .filter(|name| field != "tools" || principal.scope.allows_tool(name))
                    .map(|name| item["name"] = json!(prefixed(&target.prefix, &name)))
                    .is_some(),
                "resources" => item
                    .get("uri")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .map(|uri| item["uri"] = json!(wrap_target(target, &uri)))
                    .is_some(),
                _ => item
                    .get("uriTemplate")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .map(|t| item["uriTemplate"] = json!(wrap_target(target, &t)))
                    .is_some(),
            };
            if renamed {
                merged.push(item);
            }
        }
    }
    result(json!({
        "resultType": "complete",
        field: merged,
        // Merged from upstreams with hints of their own: this answer is not to be cached.
        "ttlMs": 0,
        "cacheScope": "private",
    }))
}

fn wrap_target(target: &Target, uri: &str) -> String {
    wrap(&target.agent, &target.server, uri)
}
