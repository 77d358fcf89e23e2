//! The agents connected to this relay, by organisation and name. The newest tunnel for an
//! agent wins: registering closes the one it replaces, so a reconnecting agent never waits
//! for its dead predecessor to time out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use outpost_protocol::RelayFrame;
use outpost_tunnel::Tunnel;

/// A connected agent, as routing needs it.
#[derive(Debug, Clone)]
pub(crate) struct AgentHandle {
    /// The agent's id in the store.
    pub(crate) agent_id: String,
    /// Its organisation.
    pub(crate) org_id: String,
    /// Its name.
    pub(crate) name: String,
    /// The id of the key its tunnel authenticated with.
    pub(crate) key_id: String,
    /// The servers it offers: from its hello, replaced when it announces a change.
    servers: Arc<std::sync::RwLock<Arc<Vec<String>>>>,
    /// The tunnel to it.
    pub(crate) tunnel: Tunnel<RelayFrame>,
    /// Set when the agent says it is draining: no new sessions go to it.
    pub(crate) draining: Arc<AtomicBool>,
    /// Tells this registration apart from a newer one of the same agent.
    generation: u64,
}

/// Connected agents.
#[derive(Debug)]
pub(crate) struct AgentRegistry {
    agents: Mutex<HashMap<(String, String), AgentHandle>>,
    next_generation: AtomicU64,
    /// Counts changes (an agent came, went, or announced other servers), for the
    /// aggregated endpoint's list-changed notifications.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self {
            agents: Mutex::default(),
            next_generation: AtomicU64::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl AgentHandle {
    /// A handle for a tunnel that has just been welcomed.
    pub(crate) fn new(
        agent_id: String,
        org_id: String,
        name: String,
        key_id: String,
        servers: Vec<String>,
        tunnel: Tunnel<RelayFrame>,
    ) -> Self {
        Self {
            agent_id,
            org_id,
            name,
            key_id,
            servers: Arc::new(std::sync::RwLock::new(Arc::new(servers))),
            tunnel,
            draining: Arc::default(),
            generation: 0,
        }
    }

    /// The servers it offers now.
    pub(crate) fn servers(&self) -> Arc<Vec<String>> {
        self.servers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the servers it offers (its configuration was reloaded).
    pub(crate) fn set_servers(&self, servers: Vec<String>) {
        *self.servers.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(servers);
    }

    /// Whether the agent accepts new sessions.
    pub(crate) fn is_available(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.tunnel.is_closed()
    }
}

impl AgentRegistry {
    /// Registers a tunnel, closing any older one of the same agent. Returns the handle as
    /// registered, for [`AgentRegistry::remove`].
    pub(crate) fn register(&self, mut handle: AgentHandle) -> AgentHandle {
        handle.generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let key = (handle.org_id.clone(), handle.name.clone());
        if let Some(old) = self.lock().insert(key, handle.clone()) {
            tracing::info!(agent = %old.name, "a newer tunnel replaces this agent's tunnel");
            old.tunnel.close();
        }
        self.changed();
        handle
    }

    /// Notes that an agent's servers changed.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Follows changes to the set of agents and their servers.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The connected agents of an organisation, by name.
    pub(crate) fn of_org(&self, org_id: &str) -> Vec<AgentHandle> {
        let mut agents: Vec<AgentHandle> = self
            .lock()
            .values()
            .filter(|h| h.org_id == org_id)
            .cloned()
            .collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        agents
    }

    /// Closes every tunnel that authenticated with key `key_id` (it was just revoked).
    pub(crate) fn close_for_key(&self, key_id: &str) {
        for handle in self.lock().values().filter(|h| h.key_id == key_id) {
            tracing::info!(agent = %handle.name, "its key was revoked: closing the tunnel");
            handle.tunnel.close();
        }
    }

    /// Removes `handle`, unless a newer registration has replaced it.
    pub(crate) fn remove(&self, handle: &AgentHandle) {
        let key = (handle.org_id.clone(), handle.name.clone());
        let mut agents = self.lock();
        if agents
            .get(&key)
            .is_some_and(|h| h.generation == handle.generation)
        {
            agents.remove(&key);
            drop(agents);
            self.changed();
        }
    }

    /// The connected agent of that name in that organisation.
    pub(crate) fn get(&self, org_id: &str, name: &str) -> Option<AgentHandle> {
        self.lock()
            .get(&(org_id.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Connected agents.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), AgentHandle>> {
        // One map operation per critical section: a poisoned map is still consistent.
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
