//! `subscriptions/listen` at `/mcp` for clients of the 2026 era: one stream to the client
//! that merges a listen stream to every reachable upstream (passed through to a 2026
//! server, bridged to a 2025 one by `listen.rs`) with the relay's own list changes when
//! agents connect, disconnect or announce other servers. Resource URIs are wrapped and
//! unwrapped with the `/mcp` naming (`aggregate.rs`). Owns the merge, not the upstream
//! listens themselves, nor the per-key cap on listen streams (taken by the caller).
//!
//! The acknowledgement waits (up to [`ACK_WAIT`]) for every upstream's own: the honored
//! filter has the list changes the client asked for (the relay sends them itself when the
//! reachable servers change, whatever the upstreams can do) and the wrapped URIs whose
//! upstream honored the subscription.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::App;
use crate::aggregate::{Named, find_wrapped, wrap};
use crate::auth::Principal;
use crate::bridge_legacy::{Era, Refusal};
use crate::listen::{self, Filter, RESOURCE_UPDATED};
use crate::mcp_endpoint::LISTEN_METHOD;
use crate::router::relay_request_id;

/// How long the client's acknowledgement waits for the upstreams' own.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Messages buffered from the upstream listens to the merge.
const MERGE_DEPTH: usize = 64;

/// One upstream's event: a message of its listen stream, or `None` when it ended.
type Event = (String, Option<Bytes>);

/// Serves a listen request at `/mcp` with the client's request `id` until the client goes
/// away (`tx` closes) or the relay shuts down (the graceful result). An unknown wrapped URI
/// or a bad filter is refused before any upstream is asked.
pub(crate) async fn serve<T: Named + Clone + Send + Sync + 'static>(
    app: &Arc<App>,
    principal: &Principal,
    targets: impl Fn() -> Vec<T>,
    id: &Value,
    params: Value,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Value, Refusal> {
    let filter = Filter::parse(&params).map_err(|text| Refusal::Rpc(-32602, text))?;
    let mut current = targets();
    // The asked URIs, unwrapped, by upstream (agent/server).
    let mut uris: HashMap<String, Vec<String>> = HashMap::new();
    for uri in &filter.uris {
        let mut holder = json!({"uri": uri});
        let Some(target) = find_wrapped(&current, &mut holder, "/uri") else {
            return Err(Refusal::Rpc(
                -32602,
                format!("Invalid params: no reachable server has the resource {uri}"),
            ));
        };
        let original = holder["uri"].as_str().unwrap_or_default().to_owned();
        uris.entry(key_of(&target)).or_default().push(original);
    }
    let meta = params.get("_meta").cloned().unwrap_or_else(|| json!({}));
    let stop = CancellationToken::new();
    let _stop_all = stop.clone().drop_guard();
    let (events_tx, mut events) = mpsc::channel::<Event>(MERGE_DEPTH);
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    let start = |target: &T, running: &mut HashMap<String, CancellationToken>| {
        let key = key_of(target);
        let upstream_filter = Filter {
            tools: filter.tools,
            prompts: filter.prompts,
            resources: filter.resources,
            uris: uris.get(&key).cloned().unwrap_or_default(),
        };
        let token = stop.child_token();
        running.insert(key.clone(), token.clone());
        app.tasks.spawn(upstream_listen(
            app.clone(),
            principal.clone(),
            target.agent().to_owned(),
            target.server().to_owned(),
            json!({"_meta": meta, "notifications": upstream_filter.to_json()}),
            events_tx.clone(),
            token,
        ));
    };
    for target in &current {
        start(target, &mut running);
    }

    // The acknowledgement, once every upstream has acknowledged (or ended, or is late).
    let mut waiting: HashSet<String> = running.keys().cloned().collect();
    let mut honored_uris = HashSet::new();
    let mut early = Vec::new();
    let ack_by = tokio::time::Instant::now() + ACK_WAIT;
    while !waiting.is_empty() {
        let Ok(Some((key, message))) = tokio::time::timeout_at(ack_by, events.recv()).await else {
            break;
        };
        let Some(message) = message else {
            waiting.remove(&key);
            continue;
        };
        match listen::notification(&message) {
            Some((method, params)) if method == listen::ACKNOWLEDGED => {
                waiting.remove(&key);
                let (agent, server) = key.split_once('/').unwrap_or_default();
                honored_uris.extend(
                    params
                        .pointer("/notifications/resourceSubscriptions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(|uri| wrap(agent, server, uri)),
                );
            }
            _ => early.push((key, message)),
        }
    }
    let honored = Filter {
        // In the order the client asked for them.
        uris: filter
            .uris
            .iter()
            .filter(|uri| honored_uris.contains(*uri))
            .cloned()
            .collect(),
        ..filter.clone()
    };
    if tx
        .send(listen::acknowledgement(&honored, id))
        .await
        .is_err()
    {
        return Ok(listen::closing(id));
    }
    for (key, message) in early {
        if forward(&honored, id, &key, &message, tx).await.is_err() {
            return Ok(listen::closing(id));
        }
    }

    let mut changes = app.agents.subscribe();
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(listen::closing(id)),
            _ = app.shutdown.cancelled() => return Ok(listen::closing(id)),
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(listen::closing(id));
                }
                let now = targets();
                let before: HashSet<String> = current.iter().map(key_of).collect();
                let after: HashSet<String> = now.iter().map(key_of).collect();
                if before == after {
                    continue;
                }
                running.retain(|key, token| {
                    let keep = after.contains(key);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for target in now.iter().filter(|t| !before.contains(&key_of(*t))) {
                    start(target, &mut running);
                }
                current = now;
                for method in list_changes(&filter) {
                    if tx.send(listen::stamped(method, json!({}), id)).await.is_err() {
                        return Ok(listen::closing(id));
                    }
                }
            }
            event = events.recv() => {
                let Some((key, message)) = event else { continue };
                match message {
                    Some(message) => {
                        if forward(&honored, id, &key, &message, tx).await.is_err() {
                            return Ok(listen::closing(id));
                        }
                    }
                    None => {
                        // The upstream's listen ended (it went away, or refused): its list
                        // changes come from the agent registry from now on.
                        tracing::debug!(upstream = %key, "an upstream listen stream ended");
                        running.remove(&key);
                    }
                }
            }
        }
    }
}

/// Sends an upstream's notification to the client, when the honored filter asks for it:
/// its resource URI wrapped, stamped with the client's listen id.
async fn forward(
    honored: &Filter,
    id: &Value,
    key: &str,
    message: &[u8],
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), mpsc::error::SendError<Bytes>> {
    let Some((method, mut params)) = listen::notification(message) else {
        return Ok(());
    };
    if method == RESOURCE_UPDATED {
        let (agent, server) = key.split_once('/').unwrap_or_default();
        let Some(uri) = params.get("uri").and_then(Value::as_str) else {
            return Ok(());
        };
        params["uri"] = json!(wrap(agent, server, uri));
    }
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        // The upstream's subscription id is the relay's, not the client's.
        meta.remove(listen::SUBSCRIPTION_ID);
    }
    let uri = params.get("uri").and_then(Value::as_str);
    if honored.accepts(&method, uri) {
        tx.send(listen::stamped(&method, params, id)).await?;
    }
    Ok(())
}

/// One upstream's listen stream, whatever its era, feeding `events` until it ends or
/// `stop` fires; then `None` for it.
async fn upstream_listen(
    app: Arc<App>,
    principal: Principal,
    agent: String,
    server: String,
    params: Value,
    events: mpsc::Sender<Event>,
    stop: CancellationToken,
) {
    let key = format!("{agent}/{server}");
    let (tx, mut rx) = mpsc::channel::<Bytes>(MERGE_DEPTH);
    let listen = async {
        let tx = tx;
        match app.legacy.era(&app, &principal, &agent, &server).await {
            Era::Modern => {
                let _ = crate::bridge::one_shot_request(
                    &app,
                    &principal,
                    &agent,
                    &server,
                    LISTEN_METHOD,
                    params,
                    &tx,
                    &stop,
                )
                .await;
            }
            Era::Legacy => {
                let id = json!(relay_request_id());
                let _ = listen::bridged(&app, &principal, &agent, &server, &id, params, &tx).await;
            }
        }
    };
    let pass = async {
        while let Some(message) = rx.recv().await {
            if events.send((key.clone(), Some(message))).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(listen, pass) } => {}
    }
    let _ = events.send((key, None)).await;
}

/// The list-change notifications `filter` asks for.
fn list_changes(filter: &Filter) -> impl Iterator<Item = &'static str> + '_ {
    [
        (filter.tools, listen::TOOLS_CHANGED),
        (filter.prompts, listen::PROMPTS_CHANGED),
        (filter.resources, listen::RESOURCES_CHANGED),
    ]
    .into_iter()
    .filter_map(|(on, method)| on.then_some(method))
}

fn key_of<T: Named>(target: &T) -> String {
    format!("{}/{}", target.agent(), target.server())
}
