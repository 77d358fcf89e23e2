//! The admin API, `/admin/v1/...`: JSON over the relay's TLS listener, authenticated with
//! a client key whose role decides what it may do (see `control.rs`, which holds the
//! operations; this module is only their HTTP form). Its OpenAPI document is
//! `docs/openapi/admin-v1.json`, served at `/admin/v1/openapi.json`.
//!
//! Errors are JSON `{"error", "message", "correlation_id"}`; the message is generic for
//! server errors, whose detail goes to the log under the same correlation id.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::App;
use crate::auth::{self, KeyKind, now_ms};
use crate::control::{Actor, Control, ControlError, CreateKey, Role, UsageBy};
use crate::error::{CorrelationId, set_correlation};

/// The client's address, set by the server for each connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// The OpenAPI document, kept in the repository and checked against these routes by a test.
pub const OPENAPI: &str = include_str!("../../docs/openapi/admin-v1.json");

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/admin/v1/openapi.json", get(openapi))
        .route(
            "/admin/v1/organisation",
            get(organisation).patch(rename_organisation),
        )
        .route("/admin/v1/keys", get(list_keys).post(create_key))
        .route("/admin/v1/keys/{id}", get(get_key).patch(change_role))
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route("/admin/v1/agents", get(agents))
        .route("/admin/v1/usage", get(usage))
        .route("/admin/v1/audit", get(audit))
        .route("/admin/v1/audit/verify", get(verify_audit))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// An authenticated admin request's context.
struct Ctx {
    actor: Actor,
    correlation: CorrelationId,
}

enum AdminError {
    Unauthorized,
    /// Unauthorized, from a source over its failure limit: 429 after a delay.
    Slowed(std::time::Duration),
    Control(ControlError),
    BadRequest(String),
    TooLarge,
    UnsupportedMediaType,
}

impl From<ControlError> for AdminError {
    fn from(err: ControlError) -> Self {
        AdminError::Control(err)
    }
}

async fn authenticate(
    app: &Arc<App>,
    parts: &http::request::Parts,
) -> Result<Ctx, (AdminError, CorrelationId)> {
    let correlation = CorrelationId::new();
    let headers = &parts.headers;
    let principal = match auth::bearer(headers.get(header::AUTHORIZATION)) {
        Ok(key) => auth::authenticate(
            app.store.as_ref(),
            &app.pepper,
            app.config.environment,
            KeyKind::Client,
            key,
        )
        .await
        .map_err(|err| {
            tracing::info!(reason = %err, correlation = %correlation.0, "admin key refused");
            app.note_refused_key(&err, headers, &parts.extensions, &correlation);
            match app.note_auth_failure(headers, &parts.extensions, &correlation) {
                Some(delay) => AdminError::Slowed(delay),
                None => AdminError::Unauthorized,
            }
        }),
        Err(_) => Err(AdminError::Unauthorized),
    };
    let principal = match principal {
        Ok(principal) => principal,
        Err(err) => return Err((err, correlation)),
    };
    let Some(role) = Role::parse(&principal.role) else {
        return Err((AdminError::Unauthorized, correlation));
    };
    app.note_key_used(&principal);
    let actor = Actor {
        id: principal.key_id.0.clone(),
        org_id: principal.org_id.clone(),
        role,
        scopes: principal.scope.scopes().clone(),
        source: parts
            .extensions
            .get::<PeerAddr>()
            .map(|peer| peer.0.ip().to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect()),
        correlation_id: Some(correlation.0.clone()),
    };
    Ok(Ctx { actor, correlation })
}

fn control(app: &App) -> Control<'_> {
    Control {
        store: app.store.as_ref(),
        pepper: &app.pepper,
        chain: &app.chain,
        environment: app.config.environment,
    }
}

/// Runs `op` for an authenticated actor and renders its result or error.
async fn handle<F, Fut>(app: Arc<App>, request: Request, status: StatusCode, op: F) -> Response
where
    F: FnOnce(Arc<App>, Ctx, Bytes) -> Fut,
    Fut: Future<Output = Result<serde_json::Value, AdminError>>,
{
    let (parts, mut body) = request.into_parts();
    let ctx = match authenticate(&app, &parts).await {
        Ok(ctx) => ctx,
        Err((err, correlation)) => {
            // Refused before its body was read: take the rest in, so the client reads
            // the answer instead of a reset connection.
            crate::body::discard(&mut body).await;
            if let AdminError::Slowed(delay) = err {
                // A source over its failure limit waits for its answer.
                tokio::time::sleep(delay).await;
            }
            return render_error(err, &correlation);
        }
    };
    let correlation = ctx.correlation.clone();
    let body = match read_json_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(err) => return render_error(err, &correlation),
    };
    let mut response = match op(app, ctx, body).await {
        Ok(value) => (status, axum::Json(value)).into_response(),
        Err(err) => render_error(err, &correlation),
    };
    set_correlation(&mut response, &correlation);
    response
}

async fn read_json_body(
    headers: &http::HeaderMap,
    mut body: axum::body::Body,
) -> Result<Bytes, AdminError> {
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            crate::body::discard(&mut body).await;
            return Err(AdminError::UnsupportedMediaType);
        }
    }
    crate::body::read_limited(headers, body, MAX_ADMIN_BODY)
        .await
        .map_err(|err| match err {
            crate::body::BodyError::TooLarge => AdminError::TooLarge,
            crate::body::BodyError::Unreadable => {
                AdminError::BadRequest("the body could not be read".into())
            }
        })
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, AdminError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    // serde would read a struct from a JSON array by position; the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AdminError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

fn render_error(err: AdminError, correlation: &CorrelationId) -> Response {
    let (status, code, message) = match err {
        AdminError::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid client key is required".to_owned(),
        ),
        AdminError::Slowed(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed authentications from this address; slow down".to_owned(),
        ),
        AdminError::BadRequest(message) => (StatusCode::BAD_REQUEST, "invalid_request", message),
        AdminError::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body exceeds {MAX_ADMIN_BODY} bytes"),
        ),
        AdminError::UnsupportedMediaType => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json".to_owned(),
        ),
        AdminError::Control(ControlError::Forbidden(message)) => {
            (StatusCode::FORBIDDEN, "forbidden", message)
        }
        AdminError::Control(ControlError::NotFound(message)) => (
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{message} not found"),
        ),
        AdminError::Control(ControlError::Invalid(message)) => {
            (StatusCode::BAD_REQUEST, "invalid_request", message)
        }
        AdminError::Control(ControlError::Conflict(message)) => (
            StatusCode::CONFLICT,
            "conflict",
            format!("{message} already exists"),
        ),
        AdminError::Control(ControlError::StateConflict(message)) => {
            (StatusCode::CONFLICT, "conflict", message)
        }
        AdminError::Control(ControlError::Store(err)) => {
            tracing::error!(%err, correlation = %correlation.0, "admin request failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; quote the correlation id to your operator".to_owned(),
            )
        }
    };
    let mut response = (
        status,
        axum::Json(json!({
            "error": code,
            "message": message,
            "correlation_id": correlation.0,
        })),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("60"));
    }
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"outpost\""),
        );
    }
    set_correlation(&mut response, correlation);
    response
}

fn to_value<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn check_key_id(id: &str) -> Result<(), AdminError> {
    let valid = id
        .strip_prefix("kid_")
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if valid {
        Ok(())
    } else {
        Err(AdminError::BadRequest(
            "key ids are kid_ and 16 hex digits".into(),
        ))
    }
}

async fn organisation(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        Ok(control(&app).organisation(&ctx.actor).await?)
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    name: String,
}

async fn rename_organisation(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, body| async move {
        if body.is_empty() {
            return Err(AdminError::BadRequest(
                "a body {\"name\": ...} is required".into(),
            ));
        }
        let rename: Rename = parse(&body)?;
        Ok(control(&app)
            .rename_organisation(&ctx.actor, &rename.name)
            .await?)
    })
    .await
}

async fn list_keys(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        let keys = control(&app).list_keys(&ctx.actor).await?;
        Ok(json!({ "keys": keys }))
    })
    .await
}

async fn get_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        check_key_id(&id)?;
        Ok(to_value(&control(&app).get_key(&ctx.actor, &id).await?))
    })
    .await
}

async fn create_key(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(
        app,
        request,
        StatusCode::CREATED,
        |app, ctx, body| async move {
            let create: CreateKey = parse(&body)?;
            let created = control(&app).create_key(&ctx.actor, create).await?;
            Ok(json!({
                "key": created.key,
                "secret": created.secret.expose_secret(),
            }))
        },
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleChange {
    role: Option<Role>,
}

async fn change_role(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, body| async move {
        check_key_id(&id)?;
        let change: RoleChange = parse(&body)?;
        let role = change
            .role
            .ok_or_else(|| AdminError::BadRequest("role is required".into()))?;
        Ok(to_value(
            &control(&app).change_role(&ctx.actor, &id, role).await?,
        ))
    })
    .await
}

async fn revoke_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        check_key_id(&id)?;
        let key = control(&app).revoke_key(&ctx.actor, &id).await?;
        // A revoked agent key's live tunnel is closed at once, not at the next recheck.
        app.agents.close_for_key(&id);
        Ok(to_value(&key))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    overlap_seconds: Option<u64>,
}

async fn rotate_key(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    handle(
        app,
        request,
        StatusCode::CREATED,
        |app, ctx, body| async move {
            check_key_id(&id)?;
            let rotate: Rotate = parse(&body)?;
            let created = control(&app)
                .rotate_key(
                    &ctx.actor,
                    &id,
                    rotate.overlap_seconds.unwrap_or(DEFAULT_OVERLAP),
                )
                .await?;
            Ok(json!({
                "key": created.key,
                "secret": created.secret.expose_secret(),
            }))
        },
    )
    .await
}

async fn agents(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        let control = control(&app);
        // Reading agents is allowed to every role; `organisation` checks the role table.
        control.organisation(&ctx.actor).await?;
        let records = app
            .store
            .agents(&ctx.actor.org_id)
            .await
            .map_err(ControlError::from)?;
        let agents: Vec<serde_json::Value> = records
            .iter()
            .map(|agent| {
                let live = app.agents.get(&ctx.actor.org_id, &agent.name);
                json!({
                    "id": agent.id,
                    "name": agent.name,
                    "connected": live.is_some(),
                    "servers": live.map(|h| h.servers().as_ref().clone()).unwrap_or_default(),
                })
            })
            .collect();
        Ok(json!({ "agents": agents }))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct UsageQuery {
    since: Option<String>,
    by: Option<UsageBy>,
}

async fn usage(
    State(app): State<Arc<App>>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        let Ok(Query(query)) = query else {
            return Err(AdminError::BadRequest(
                "query: since=DURATION (e.g. 24h), by=tool|key|agent|server".into(),
            ));
        };
        let since = parse_since(query.since.as_deref().unwrap_or("24h"))?;
        let by = query.by.unwrap_or(UsageBy::Tool);
        let rows = control(&app).usage(&ctx.actor, since, by).await?;
        Ok(json!({ "since": since, "by": by, "rows": rows }))
    })
    .await
}

/// `24h`, `90m`, ...: a duration back from now, in ms since the epoch.
pub fn parse_since(text: &str) -> Result<i64, AdminErrorText> {
    let invalid = || {
        AdminErrorText(format!(
            "since={text:?}: a number and a unit, s, m, h, d or w (24h)"
        ))
    };
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(unit_at);
    if number.is_empty() || number.len() > 9 || !matches!(unit, "s" | "m" | "h" | "d" | "w") {
        return Err(invalid());
    }
    let duration = humantime::parse_duration(text).map_err(|_| invalid())?;
    Ok(now_ms().saturating_sub(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)))
}

/// A bad query parameter.
#[derive(Debug)]
pub struct AdminErrorText(pub String);

impl From<AdminErrorText> for AdminError {
    fn from(err: AdminErrorText) -> Self {
        AdminError::BadRequest(err.0)
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(app): State<Arc<App>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        let Ok(Query(query)) = query else {
            return Err(AdminError::BadRequest(
                "query: after=SEQ, limit=1..1000".into(),
            ));
        };
        let after = query.after.unwrap_or(0).max(0);
        let limit = query.limit.unwrap_or(100).clamp(1, 1000);
        let events = control(&app).audit_rows(&ctx.actor, after, limit).await?;
        Ok(json!({ "events": events }))
    })
    .await
}

async fn verify_audit(State(app): State<Arc<App>>, request: Request) -> Response {
    handle(app, request, StatusCode::OK, |app, ctx, _| async move {
        let result = control(&app).verify_audit(&ctx.actor).await?;
        Ok(json!({ "rows": result.rows, "intact": result.problem.is_none(), "problem": result.problem }))
    })
    .await
}

const MAX_ADMIN_BODY: usize = 64 * 1024;
const DEFAULT_OVERLAP: u64 = 24 * 3600;
