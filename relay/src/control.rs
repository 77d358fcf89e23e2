//! The control plane's operations, shared by the admin API and the command line: keys
//! (create, list, revoke, rotate, change role), agents, usage and the audit trail. Every
//! operation acts for an [`Actor`] inside one organisation, checks the actor's role
//! against [`permits`], never sees another organisation's objects (they are "not found",
//! not "forbidden", so their existence does not leak), and appends an audit event for
//! every change. Returns key secrets once, at creation; never stores or logs them.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditEvent, ChainKey};
use crate::auth::{self, Environment, KeyKind, Pepper, now_ms};
use crate::scope::Scope;
use crate::store::{KeyRecord, NewKey, Scopes, Store, StoreError, UsageEvent};

/// A member's role. Each client key is a member's credential and carries its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads usage and agents.
    Viewer,
    /// Calls MCP within its scope and manages its own keys.
    Member,
    /// Manages agents, keys and members.
    Admin,
    /// Also manages the organisation and its owners.
    Owner,
}

/// What an actor asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Read the organisation.
    ReadOrganisation,
    /// Rename the organisation.
    UpdateOrganisation,
    /// List agents.
    ReadAgents,
    /// Read usage.
    ReadUsage,
    /// List keys (members: their own).
    ReadKeys,
    /// Create a client key for oneself (members), or any key (admins).
    CreateKey,
    /// Create an agent key.
    CreateAgentKey,
    /// Revoke or rotate a key (members: their own).
    ManageKey,
    /// Change a member's role.
    ChangeRole,
    /// Read and verify the audit trail.
    ReadAudit,
}

/// Whether `role` may perform `operation` at all (ownership and rank checks follow).
pub fn permits(role: Role, operation: Operation) -> bool {
    use Operation::*;
    match operation {
        ReadOrganisation | ReadAgents | ReadUsage => true,
        ReadKeys | CreateKey | ManageKey => role >= Role::Member,
        CreateAgentKey | ChangeRole | ReadAudit => role >= Role::Admin,
        UpdateOrganisation => role == Role::Owner,
    }
}

impl Role {
    /// Parses a stored role name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// Who acts, where from.
#[derive(Debug, Clone)]
pub struct Actor {
    /// A key id, or `cli`.
    pub id: String,
    /// The organisation it acts in.
    pub org_id: String,
    /// Its role.
    pub role: Role,
    /// Its scopes, which bound the keys a member may make.
    pub scopes: Scopes,
    /// Client address.
    pub source: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// The request's correlation id.
    pub correlation_id: Option<String>,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The role does not allow it (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such object in the actor's organisation (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The request is invalid (400), with the reason.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A unique name is taken (409).
    #[error("{0} already exists")]
    Conflict(String),
    /// The object's state does not allow it (409).
    #[error("{0}")]
    StateConflict(String),
    /// The store failed (500).
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ControlError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(what) => ControlError::NotFound(what),
            StoreError::Conflict(what) => ControlError::Conflict(what),
            other => ControlError::Store(other),
        }
    }
}

/// A key as listed: everything but the secret and its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyView {
    /// `kid_...`
    pub id: String,
    /// Label.
    pub name: String,
    /// `client` or `agent`.
    pub kind: String,
    /// Role (`agent` for agent keys).
    pub role: String,
    /// For agent keys, the agent's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `agent/server` globs.
    pub scopes: Vec<String>,
    /// Tool globs; empty: every tool.
    pub tools: Vec<String>,
    /// Requests per second of its own bucket, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// Burst of its own bucket, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// `active`, `revoked`, `expired` or `rotating` (replaced, still in its overlap).
    pub state: String,
    /// ms since the epoch.
    pub created_at: i64,
    /// ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
    /// ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// ms since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// The key that replaces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Who created it.
    pub created_by: String,
}

/// A key to create.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Label.
    #[serde(default)]
    pub name: Option<String>,
    /// For an agent key: the agent's name (created if new). Absent: a client key.
    #[serde(default)]
    pub agent: Option<String>,
    /// Role of a client key; `member` by default.
    #[serde(default)]
    pub role: Option<Role>,
    /// `agent/server` globs; every server by default (members: their own scopes).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Tool globs; every tool by default.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// A rate plan: `small` (10/s), `medium` (100/s) or `large` (1,000/s).
    #[serde(default)]
    pub plan: Option<String>,
    /// Its own rate, requests per second (instead of a plan).
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    /// Its own burst.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Lifetime in seconds.
    #[serde(default)]
    pub expires_in_seconds: Option<u64>,
}

/// A created key: the secret, shown once.
#[derive(Debug)]
pub struct CreatedKey {
    /// The key as listed.
    pub key: KeyView,
    /// The secret.
    pub secret: SecretString,
}

/// One row of a usage summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRow {
    /// The group's value (a tool, key, agent or server name).
    pub group: String,
    /// Calls.
    pub calls: u64,
    /// Calls that ended in an error, timeout or unavailability.
    pub errors: u64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Request bytes.
    pub bytes_in: i64,
    /// Response bytes.
    pub bytes_out: i64,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageBy {
    /// By tool (non-tool calls as their method).
    Tool,
    /// By key id.
    Key,
    /// By agent.
    Agent,
    /// By agent/server.
    Server,
}

/// The control plane over one store.
pub struct Control<'a> {
    /// The store.
    pub store: &'a dyn Store,
    /// For key hashes.
    pub pepper: &'a Pepper,
    /// For the audit chain.
    pub chain: &'a ChainKey,
    /// The keys' environment.
    pub environment: Environment,
}

impl Control<'_> {
    /// Lists the organisation's keys (members: their own).
    pub async fn list_keys(&self, actor: &Actor) -> Result<Vec<KeyView>, ControlError> {
        require(actor, Operation::ReadKeys)?;
        let agents = self.agent_names(&actor.org_id).await?;
        let keys = self.store.keys(&actor.org_id).await?;
        Ok(keys
            .iter()
            .filter(|key| actor.role >= Role::Admin || owns(actor, key))
            .map(|key| view(key, &agents))
            .collect())
    }

    /// One key.
    pub async fn get_key(&self, actor: &Actor, id: &str) -> Result<KeyView, ControlError> {
        require(actor, Operation::ReadKeys)?;
        let key = self.key_of(actor, id).await?;
        if actor.role < Role::Admin && !owns(actor, &key) {
            return Err(not_found(id));
        }
        let agents = self.agent_names(&actor.org_id).await?;
        Ok(view(&key, &agents))
    }

    /// Creates a key; the secret is in the result, once.
    pub async fn create_key(
        &self,
        actor: &Actor,
        request: CreateKey,
    ) -> Result<CreatedKey, ControlError> {
        let (kind, role, agent_id) = match &request.agent {
            Some(agent) => {
                require(actor, Operation::CreateAgentKey)?;
                if !crate::is_valid_name(agent) {
                    return Err(ControlError::Invalid(format!(
                        "agent name {agent:?} must match [a-z0-9_-]{{1,64}}"
                    )));
                }
                let record = self.store.ensure_agent(&actor.org_id, agent).await?;
                (KeyKind::Agent, "agent".to_owned(), Some(record.id))
            }
            None => {
                require(actor, Operation::CreateKey)?;
                let role = request.role.unwrap_or(Role::Member);
                if role > actor.role || (role == Role::Admin && actor.role < Role::Admin) {
                    return Err(ControlError::Forbidden(format!(
                        "a {} cannot create a key of role {}",
                        actor.role.as_str(),
                        role.as_str()
                    )));
                }
                (KeyKind::Client, role.as_str().to_owned(), None)
            }
        };
        let scopes = self.scopes_for(actor, &request)?;
        let (rate_per_second, burst) = rate_of(&request)?;
        let expires_at =
            match request.expires_in_seconds {
                Some(0) => {
                    return Err(ControlError::Invalid(
                        "expires_in_seconds must be positive".into(),
                    ));
                }
                Some(seconds) if seconds > MAX_LIFETIME_SECONDS => {
                    return Err(ControlError::Invalid(format!(
                        "expires_in_seconds must be at most {MAX_LIFETIME_SECONDS} (ten years)"
                    )));
                }
                Some(seconds) => Some(now_ms().saturating_add(
                    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
                )),
                None => None,
            };
        let name = request
            .name
            .clone()
            .unwrap_or_else(|| match &request.agent {
                Some(agent) => format!("agent {agent}"),
                None => format!("{role} key"),
            });
        if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control)
        {
            return Err(ControlError::Invalid(format!(
                "name must be 1 to {MAX_NAME} printable characters"
            )));
        }
        let generated = auth::generate(kind, self.environment, self.pepper);
        let new = NewKey {
            id: generated.key_id.0.clone(),
            org_id: actor.org_id.clone(),
            kind: kind.as_str(),
            environment: self.environment.as_str(),
            name,
            role,
            agent_id,
            hash: generated.hash,
            expires_at,
            scopes,
            rate_per_second,
            burst,
            created_by: actor.id.clone(),
        };
        self.store.insert_key(new).await?;
        self.audit(
            actor,
            "key.created",
            &generated.key_id.0,
            serde_json::json!({
                "kind": kind.as_str(),
                "agent": request.agent,
            }),
        )
        .await?;
        let key = self
            .get_key_unchecked(&actor.org_id, &generated.key_id.0)
            .await?;
        Ok(CreatedKey {
            key,
            secret: generated.secret,
        })
    }

    /// Revokes a key: refused from the next request on.
    pub async fn revoke_key(&self, actor: &Actor, id: &str) -> Result<KeyView, ControlError> {
        require(actor, Operation::ManageKey)?;
        let key = self.key_of(actor, id).await?;
        self.may_manage(actor, &key)?;
        if key.role == "owner"
            && key.revoked_at.is_none()
            && self.owner_count(&actor.org_id).await? <= 1
        {
            return Err(ControlError::StateConflict(
                "the organisation's last owner key cannot be revoked".into(),
            ));
        }
        self.store.revoke_key(&actor.org_id, id, now_ms()).await?;
        self.audit(
            actor,
            "key.revoked",
            id,
            serde_json::json!({"kind": key.kind}),
        )
        .await?;
        self.get_key_unchecked(&actor.org_id, id).await
    }

    /// Rotates a key: a new key with the same attributes; the old one keeps working for
    /// `overlap_seconds`, then expires.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        id: &str,
        overlap_seconds: u64,
    ) -> Result<CreatedKey, ControlError> {
        require(actor, Operation::ManageKey)?;
        let old = self.key_of(actor, id).await?;
        self.may_manage(actor, &old)?;
        if old.revoked_at.is_some()
            || old.replaced_by.is_some()
            || old.expires_at.is_some_and(|at| at <= now_ms())
        {
            return Err(ControlError::StateConflict(format!(
                "key {id} is revoked, expired or already rotated"
            )));
        }
        if overlap_seconds > MAX_OVERLAP_SECONDS {
            return Err(ControlError::Invalid(format!(
                "overlap_seconds must be at most {MAX_OVERLAP_SECONDS}"
            )));
        }
        let kind = if old.kind == "agent" {
            KeyKind::Agent
        } else {
            KeyKind::Client
        };
        let generated = auth::generate(kind, self.environment, self.pepper);
        let new = NewKey {
            id: generated.key_id.0.clone(),
            org_id: actor.org_id.clone(),
            kind: kind.as_str(),
            environment: self.environment.as_str(),
            name: old.name.clone(),
            role: old.role.clone(),
            agent_id: old.agent_id.clone(),
            hash: generated.hash,
            expires_at: old.expires_at,
            scopes: old.scopes.clone(),
            rate_per_second: old.rate_per_second,
            burst: old.burst,
            created_by: actor.id.clone(),
        };
        let overlap_ends =
            now_ms().saturating_add(i64::try_from(overlap_seconds * 1000).unwrap_or(i64::MAX));
        self.store
            .rotate_key(&actor.org_id, id, new, overlap_ends)
            .await?;
        self.audit(
            actor,
            "key.rotated",
            id,
            serde_json::json!({
                "replaced_by": generated.key_id.0,
                "overlap_seconds": overlap_seconds,
            }),
        )
        .await?;
        let key = self
            .get_key_unchecked(&actor.org_id, &generated.key_id.0)
            .await?;
        Ok(CreatedKey {
            key,
            secret: generated.secret,
        })
    }

    /// Changes the role of a member's key.
    pub async fn change_role(
        &self,
        actor: &Actor,
        id: &str,
        role: Role,
    ) -> Result<KeyView, ControlError> {
        require(actor, Operation::ChangeRole)?;
        let key = self.key_of(actor, id).await?;
        let Some(current) = Role::parse(&key.role) else {
            return Err(ControlError::StateConflict(
                "agent keys have no role".into(),
            ));
        };
        // Only owners make or unmake owners.
        if (current == Role::Owner || role == Role::Owner) && actor.role != Role::Owner {
            return Err(ControlError::Forbidden("only owners change owners".into()));
        }
        if current == Role::Owner
            && role != Role::Owner
            && self.owner_count(&actor.org_id).await? <= 1
        {
            return Err(ControlError::StateConflict(
                "the organisation needs an owner".into(),
            ));
        }
        self.store
            .set_key_role(&actor.org_id, id, role.as_str())
            .await?;
        self.audit(
            actor,
            "member.role_changed",
            id,
            serde_json::json!({
                "from": current.as_str(),
                "to": role.as_str(),
            }),
        )
        .await?;
        self.get_key_unchecked(&actor.org_id, id).await
    }

    /// The organisation.
    pub async fn organisation(&self, actor: &Actor) -> Result<serde_json::Value, ControlError> {
        require(actor, Operation::ReadOrganisation)?;
        let org = self
            .store
            .organisation_by_id(&actor.org_id)
            .await?
            .ok_or_else(|| not_found("organisation"))?;
        Ok(serde_json::json!({"id": org.id, "name": org.name}))
    }

    /// Renames the organisation.
    pub async fn rename_organisation(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<serde_json::Value, ControlError> {
        require(actor, Operation::UpdateOrganisation)?;
        if !crate::is_valid_name(name) {
            return Err(ControlError::Invalid(
                "organisation names must match [a-z0-9_-]{1,64}".into(),
            ));
        }
        self.store.rename_organisation(&actor.org_id, name).await?;
        self.audit(
            actor,
            "organisation.renamed",
            &actor.org_id,
            serde_json::json!({"name": name}),
        )
        .await?;
        self.organisation(actor).await
    }

    /// Usage since `since` (ms since the epoch), grouped.
    pub async fn usage(
        &self,
        actor: &Actor,
        since: i64,
        by: UsageBy,
    ) -> Result<Vec<UsageRow>, ControlError> {
        require(actor, Operation::ReadUsage)?;
        let events = self.store.usage_since(&actor.org_id, since).await?;
        Ok(summarise(&events, by))
    }

    /// Audit rows after `after`, at most `limit`, of the actor's organisation.
    pub async fn audit_rows(
        &self,
        actor: &Actor,
        after: i64,
        limit: i64,
    ) -> Result<Vec<serde_json::Value>, ControlError> {
        require(actor, Operation::ReadAudit)?;
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < usize::try_from(limit).unwrap_or(0) {
            let rows = self.store.audit_rows(cursor, AUDIT_PAGE).await?;
            let Some(last) = rows.last() else { break };
            cursor = last.seq;
            out.extend(
                rows.into_iter()
                    .filter(|row| row.org_id.as_deref() == Some(actor.org_id.as_str()))
                    .map(|row| audit_json(&row)),
            );
        }
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(out)
    }

    /// Verifies the whole chain (it spans organisations; the result says only whether
    /// and where it breaks).
    pub async fn verify_audit(&self, actor: &Actor) -> Result<audit::Verification, ControlError> {
        require(actor, Operation::ReadAudit)?;
        Ok(audit::verify(self.store, self.chain).await?)
    }

    async fn audit(
        &self,
        actor: &Actor,
        action: &'static str,
        resource: &str,
        detail: serde_json::Value,
    ) -> Result<(), ControlError> {
        audit::append(
            self.store,
            self.chain,
            &[AuditEvent {
                org_id: Some(actor.org_id.clone()),
                actor: actor.id.clone(),
                action,
                resource: resource.to_owned(),
                source: actor.source.clone(),
                user_agent: actor.user_agent.clone(),
                correlation_id: actor.correlation_id.clone(),
                detail,
            }],
        )
        .await?;
        Ok(())
    }

    async fn key_of(&self, actor: &Actor, id: &str) -> Result<KeyRecord, ControlError> {
        self.store
            .key_by_id(id)
            .await?
            .filter(|key| key.org_id == actor.org_id)
            .ok_or_else(|| not_found(id))
    }

    async fn get_key_unchecked(&self, org_id: &str, id: &str) -> Result<KeyView, ControlError> {
        let key = self
            .store
            .key_by_id(id)
            .await?
            .filter(|key| key.org_id == org_id)
            .ok_or_else(|| not_found(id))?;
        let agents = self.agent_names(org_id).await?;
        Ok(view(&key, &agents))
    }

    async fn agent_names(&self, org_id: &str) -> Result<BTreeMap<String, String>, ControlError> {
        Ok(self
            .store
            .agents(org_id)
            .await?
            .into_iter()
            .map(|agent| (agent.id, agent.name))
            .collect())
    }

    async fn owner_count(&self, org_id: &str) -> Result<usize, ControlError> {
        Ok(self
            .store
            .keys(org_id)
            .await?
            .iter()
            .filter(|k| k.role == "owner" && k.revoked_at.is_none())
            .count())
    }

    /// Members manage their own keys; admins any but owners'; owners any.
    fn may_manage(&self, actor: &Actor, key: &KeyRecord) -> Result<(), ControlError> {
        let allowed = match actor.role {
            Role::Owner => true,
            Role::Admin => key.role != "owner",
            // Only its own client keys of a role no higher than its own: a demoted member
            // must not rotate its way back to admin or agent keys.
            Role::Member => {
                owns(actor, key)
                    && key.kind == "client"
                    && Role::parse(&key.role).is_some_and(|r| r <= Role::Member)
            }
            Role::Viewer => false,
        };
        if allowed {
            Ok(())
        } else if actor.role < Role::Admin {
            // A member does not learn about keys that are not theirs.
            Err(not_found(&key.id))
        } else {
            Err(ControlError::Forbidden(
                "only owners manage owner keys".into(),
            ))
        }
    }

    /// The scopes of a new key: as asked, within the creator's own for members.
    fn scopes_for(&self, actor: &Actor, request: &CreateKey) -> Result<Scopes, ControlError> {
        let base = if actor.role >= Role::Admin {
            Scopes::default()
        } else {
            actor.scopes.clone()
        };
        // Only what the request names: a member's own patterns, inherited when it names
        // none, may predate the limits.
        check_counts(request.scopes.as_deref(), request.tools.as_deref())?;
        let scopes = Scopes {
            servers: request.scopes.clone().unwrap_or(base.servers),
            tools: request.tools.clone().unwrap_or(base.tools),
        };
        if scopes.servers.is_empty() {
            return Err(ControlError::Invalid(
                "scopes must name at least one agent/server pattern".into(),
            ));
        }
        check_patterns(&scopes)?;
        Scope::new(&scopes).map_err(|e| ControlError::Invalid(e.to_string()))?;
        if actor.role < Role::Admin {
            let own =
                Scope::new(&actor.scopes).map_err(|e| ControlError::Invalid(e.to_string()))?;
            let within_servers = scopes.servers.iter().all(|p| {
                actor.scopes.servers.contains(p)
                    || (!has_glob(p)
                        && p.split_once('/')
                            .is_some_and(|(a, s)| own.allows_server(a, s)))
            });
            let within_tools = actor.scopes.tools.is_empty()
                || (!scopes.tools.is_empty()
                    && scopes.tools.iter().all(|t| {
                        actor.scopes.tools.contains(t) || (!has_glob(t) && own.allows_tool(t))
                    }));
            if !within_servers || !within_tools {
                return Err(ControlError::Forbidden(
                    "a member's new key cannot reach more than the member's own".into(),
                ));
            }
        }
        Ok(scopes)
    }
}

fn require(actor: &Actor, operation: Operation) -> Result<(), ControlError> {
    if permits(actor.role, operation) {
        Ok(())
    } else {
        Err(ControlError::Forbidden(format!(
            "role {} may not {operation:?}",
            actor.role.as_str()
        )))
    }
}

fn owns(actor: &Actor, key: &KeyRecord) -> bool {
    key.id == actor.id || key.created_by == actor.id
}

fn not_found(what: &str) -> ControlError {
    ControlError::NotFound(what.to_owned())
}

fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

fn rate_of(request: &CreateKey) -> Result<(Option<u32>, Option<u32>), ControlError> {
    let plan = match request.plan.as_deref() {
        None => None,
        Some("small") => Some(10),
        Some("medium") => Some(100),
        Some("large") => Some(1000),
        Some(other) => {
            return Err(ControlError::Invalid(format!(
                "plan {other:?} is not small, medium or large"
            )));
        }
    };
    let rate = request.rate_per_second.or(plan);
    if rate == Some(0) || request.burst == Some(0) {
        return Err(ControlError::Invalid(
            "rate and burst must be positive".into(),
        ));
    }
    // A burst alone keeps the relay's default rate; a rate alone gets twice its burst.
    let burst = request.burst.or(rate.map(|r| r.saturating_mul(2)));
    Ok((rate, burst))
}

fn view(key: &KeyRecord, agents: &BTreeMap<String, String>) -> KeyView {
    let now = now_ms();
    let state = if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else if key.replaced_by.is_some() {
        "rotating"
    } else {
        "active"
    };
    KeyView {
        id: key.id.clone(),
        name: key.name.clone(),
        kind: key.kind.clone(),
        role: key.role.clone(),
        agent: key.agent_id.as_ref().and_then(|id| agents.get(id).cloned()),
        scopes: key.scopes.servers.clone(),
        tools: key.scopes.tools.clone(),
        rate_per_second: key.rate_per_second,
        burst: key.burst,
        state: state.to_owned(),
        created_at: key.created_at,
        last_used_at: key.last_used_at,
        expires_at: key.expires_at,
        revoked_at: key.revoked_at,
        replaced_by: key.replaced_by.clone(),
        created_by: key.created_by.clone(),
    }
}

/// An audit row as exported: JSON, with hashes in hex.
pub fn audit_json(row: &crate::store::AuditRow) -> serde_json::Value {
    serde_json::json!({
        "seq": row.seq,
        "at": row.at,
        "org_id": row.org_id,
        "actor": row.actor,
        "action": row.action,
        "resource": row.resource,
        "source": row.source,
        "user_agent": row.user_agent,
        "correlation_id": row.correlation_id,
        "detail": serde_json::from_str::<serde_json::Value>(&row.detail).unwrap_or(serde_json::Value::Null),
        "prev_hash": hex(&row.prev_hash),
        "hash": hex(&row.hash),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Groups usage events, with exact latency percentiles per group.
pub fn summarise(events: &[UsageEvent], by: UsageBy) -> Vec<UsageRow> {
    let mut groups: BTreeMap<String, (UsageRow, Vec<i64>)> = BTreeMap::new();
    for event in events {
        let group = match by {
            UsageBy::Tool => event.tool.clone().unwrap_or_else(|| event.method.clone()),
            UsageBy::Key => event.key_id.clone(),
            UsageBy::Agent => event.agent.clone(),
            UsageBy::Server => format!("{}/{}", event.agent, event.server),
        };
        let (row, latencies) = groups.entry(group.clone()).or_insert_with(|| {
            (
                UsageRow {
                    group,
                    calls: 0,
                    errors: 0,
                    p50_ms: 0.0,
                    p90_ms: 0.0,
                    p99_ms: 0.0,
                    bytes_in: 0,
                    bytes_out: 0,
                },
                Vec::new(),
            )
        });
        row.calls += 1;
        if event.status != crate::store::CallStatus::Ok {
            row.errors += 1;
        }
        row.bytes_in += event.bytes_in;
        row.bytes_out += event.bytes_out;
        latencies.push(event.latency_us);
    }
    groups
        .into_values()
        .map(|(mut row, mut latencies)| {
            latencies.sort_unstable();
            let at = |q: f64| {
                let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
                latencies.get(index).copied().unwrap_or(0) as f64 / 1000.0
            };
            row.p50_ms = at(0.50);
            row.p90_ms = at(0.90);
            row.p99_ms = at(0.99);
            row
        })
        .collect()
}

const MAX_NAME: usize = 128;
const MAX_LIFETIME_SECONDS: u64 = 315_360_000;
const MAX_OVERLAP_SECONDS: u64 = 30 * 24 * 3600;
const AUDIT_PAGE: i64 = 1000;

/// Server patterns a request for a new key may name, as the OpenAPI document's `maxItems`
/// says.
const MAX_SERVER_PATTERNS: usize = 64;
/// Tool patterns a request for a new key may name, as the OpenAPI document's `maxItems`
/// says.
const MAX_TOOL_PATTERNS: usize = 256;

/// Checks how many server and tool patterns a request for a new key names against the
/// OpenAPI document's `maxItems`.
fn check_counts(servers: Option<&[String]>, tools: Option<&[String]>) -> Result<(), ControlError> {
    if servers.is_some_and(|s| s.len() > MAX_SERVER_PATTERNS)
        || tools.is_some_and(|t| t.len() > MAX_TOOL_PATTERNS)
    {
        return Err(ControlError::Invalid(format!(
            "a new key names at most {MAX_SERVER_PATTERNS} scopes and {MAX_TOOL_PATTERNS} tool patterns"
        )));
    }
    Ok(())
}

/// Checks a new key's patterns against the character sets the OpenAPI document gives
/// (names and the glob characters `*` and `?`), so that every accepted pattern compiles.
fn check_patterns(scopes: &Scopes) -> Result<(), ControlError> {
    let glob_chars =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*' | '?' | '-');
    for pattern in &scopes.servers {
        let valid = pattern.split_once('/').is_some_and(|(a, s)| {
            (1..=64).contains(&a.len())
                && (1..=64).contains(&s.len())
                && a.chars().all(glob_chars)
                && s.chars().all(glob_chars)
        });
        if !valid {
            return Err(ControlError::Invalid(format!(
                "scope {pattern:?} must be AGENT/SERVER of letters, digits, _ . - and the globs * ?"
            )));
        }
    }
    for pattern in &scopes.tools {
        let valid = (1..=128).contains(&pattern.len())
            && pattern
                .chars()
                .all(|c| glob_chars(c) || matches!(c, '/' | ':'));
        if !valid {
            return Err(ControlError::Invalid(format!(
                "tool scope {pattern:?} must be letters, digits, _ . - / : and the globs * ?"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_table_is_ordered() {
        use Operation::*;
        let ops = [
            ReadOrganisation,
            UpdateOrganisation,
            ReadAgents,
            ReadUsage,
            ReadKeys,
            CreateKey,
            CreateAgentKey,
            ManageKey,
            ChangeRole,
            ReadAudit,
        ];
        // Whatever a role may do, every higher role may do too.
        for op in ops {
            let allowed: Vec<bool> = [Role::Viewer, Role::Member, Role::Admin, Role::Owner]
                .iter()
                .map(|r| permits(*r, op))
                .collect();
            assert!(
                allowed.windows(2).all(|w| w[0] <= w[1]),
                "{op:?}: {allowed:?}"
            );
        }
        assert!(!permits(Role::Admin, UpdateOrganisation));
        assert!(!permits(Role::Viewer, ReadKeys));
    }

    /// The limits the OpenAPI document gives a new key's patterns hold: schemathesis
    /// found a key of more scopes than its `maxItems` accepted.
    #[test]
    fn a_keys_patterns_are_bounded_as_the_openapi_document_says() {
        let servers = |n: usize| vec!["prod-eu/erp".to_owned(); n];
        let tools = |n: usize| vec!["erp/*".to_owned(); n];
        let counts = |s: Option<Vec<String>>, t: Option<Vec<String>>| {
            check_counts(s.as_deref(), t.as_deref())
        };
        assert!(
            counts(
                Some(servers(MAX_SERVER_PATTERNS)),
                Some(tools(MAX_TOOL_PATTERNS))
            )
            .is_ok()
        );
        assert!(counts(None, None).is_ok());
        assert!(counts(Some(servers(MAX_SERVER_PATTERNS + 1)), None).is_err());
        assert!(counts(None, Some(tools(MAX_TOOL_PATTERNS + 1))).is_err());
        let document: serde_json::Value = serde_json::from_str(crate::admin::OPENAPI).unwrap();
        let create = &document["components"]["schemas"]["CreateKey"]["properties"];
        assert_eq!(create["scopes"]["maxItems"], MAX_SERVER_PATTERNS);
        assert_eq!(create["tools"]["maxItems"], MAX_TOOL_PATTERNS);
        assert!(
            check_patterns(&Scopes {
                servers: vec!["no-slash".to_owned()],
                tools: vec![],
            })
            .is_err()
        );
    }
}
